"""GigaSpeech.json is streamed with ijson: preparing the manifests of a generated 100 MB
file needs no more memory than of a 1 MB one, where loading the file whole would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lhotse import load_manifest

from q4asr.corpora.multien import prepare_gigaspeech

WORDS = "ALPHA BRAVO CHARLIE DELTA ECHO FOXTROT GOLF HOTEL INDIA JULIET".split()


def write_gigaspeech_json(root: Path, n_audio: int, n_seg: int = 50) -> Path:
    """``root/GigaSpeech.json`` in the release's layout, written as a stream:
    ``n_audio`` podcasts of ``n_seg`` segments with ~2 kB transcripts each (every
    audio entry names the same small file, which only has to exist)."""
    audio = root / "audio" / "podcast" / "P0000" / "x.opus"
    audio.parent.mkdir(parents=True, exist_ok=True)
    audio.write_bytes(b"")
    texts = [" ".join(WORDS[(i + j) % 10] for j in range(300)) for i in range(10)]
    with open(root / "GigaSpeech.json", "w") as f:
        f.write('{"dataset": "GigaSpeech", "language": "EN", "audios": [')
        for a in range(n_audio):
            aid = f"POD{a:010d}"
            segs = [
                {"sid": f"{aid}_S{s:07d}", "speaker": "N/A", "begin_time": 2.0 * s,
                 "end_time": 2.0 * s + 1.5, "text_tn": texts[(a + s) % 10],
                 "subsets": ["{XL}", "{XS}"]}
                for s in range(n_seg)
            ]  # fmt: skip
            entry = {"aid": aid, "path": "audio/podcast/P0000/x.opus",
                     "sample_rate": 16000, "channels": 1, "duration": 2.0 * n_seg,
                     "subsets": ["{XL}", "{XS}"], "segments": segs}  # fmt: skip
            f.write(("," if a else "") + json.dumps(entry))
        f.write("]}")
    return root / "GigaSpeech.json"


PEAK = """import json, sys
from pathlib import Path
from q4asr.corpora.multien import prepare_gigaspeech
def status(key):
    line = next(x for x in open("/proc/self/status") if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")  # the peak RSS starts again from here
before = status("VmRSS")
if sys.argv[1] == "prepare":
    prepare_gigaspeech(Path(sys.argv[2]), Path(sys.argv[3]), ["XS"])
else:  # the whole file in memory, as json.load does
    json.load(open(Path(sys.argv[2]) / "GigaSpeech.json"))
print(json.dumps({"growth_mb": status("VmHWM") - before}))
"""


def _growth(*args: str) -> float:
    """Peak RSS over the RSS before the work (MB), in a fresh process running PEAK."""
    out = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


@pytest.mark.slow
def test_gigaspeech_parsing_memory_does_not_grow_with_the_file(tmp_path):
    small = write_gigaspeech_json(tmp_path / "small", n_audio=10)
    large = write_gigaspeech_json(tmp_path / "large", n_audio=1000)
    assert large.stat().st_size > 100e6 > 50 * small.stat().st_size
    g_small = _growth("prepare", str(small.parent), str(tmp_path / "m_small"))
    g_large = _growth("prepare", str(large.parent), str(tmp_path / "m_large"))
    # every segment of the large file made it into the manifests
    sups = load_manifest(tmp_path / "m_large" / "gigaspeech_supervisions_XS.jsonl.gz")
    assert len(sups) == 1000 * 50
    assert g_large < g_small + 20, (g_small, g_large)
    # the measure sees whole-file loading: json.load of the same file grows by far more
    assert _growth("load", str(large.parent)) > g_large + 100


def test_gigaspeech_json_errors_name_the_file(tmp_path):
    (tmp_path / "GigaSpeech.json").write_text('{"audios": [{"aid": "A", ')
    with pytest.raises(ValueError, match="GigaSpeech.json: not valid JSON"):
        prepare_gigaspeech(tmp_path, tmp_path / "m", ["XS"])
    with pytest.raises(FileNotFoundError, match="GigaSpeech metadata not found"):
        prepare_gigaspeech(tmp_path / "nope", tmp_path / "m", ["XS"])
    assert not list((tmp_path / "m").glob("gigaspeech_*"))  # no manifest written
