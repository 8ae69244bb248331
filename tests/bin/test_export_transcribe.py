"""q4asr-export -> q4asr-transcribe: the served model file recognises exactly what the
checkpoint it came from recognises (int4 QAT: the integer model is bit-exact), and
q4asr-decode / q4asr-transcribe handle their inputs and errors as documented."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from lhotse import CutSet, load_manifest

from q4asr.modelfile import load_asr_model

TINY_MODEL = dict(num_mel_bins=80, subsampling_channels=8, d_model=32, num_layers=2,
                  num_heads=2, ffn_dim=64, conv_kernel=7, dropout=0.0, decoder_dim=32,
                  joiner_dim=32, ctc_weight=0.5)
TINY_TRAIN = dict(seed=3, max_steps=4, max_duration=10.0, num_buckets=2, lr=3.0e-3,
                  warmup_steps=5, model_warmup_steps=10, num_workers=0, log_every=10,
                  valid_every=4, checkpoint_every=4, keep_last_checkpoints=1,
                  num_threads=1, spec_augment={"enabled": False})


def cli(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                       text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)}:\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def qat_int4(tiny_corpus, tmp_path_factory):
    """A tiny W4A8 QAT checkpoint (4 steps: it still emits many tokens, which is what
    the comparisons need) and its exported model file."""
    tmp = tmp_path_factory.mktemp("qat")
    (tmp / "train.yaml").write_text(yaml.safe_dump({"model": TINY_MODEL,
                                                    "train": TINY_TRAIN}))
    (tmp / "w4a8.yaml").write_text("default: {weight_bits: 4, act_bits: 8}\n")
    cli("q4asr.bin.train", "--config", str(tmp / "train.yaml"), "--exp-dir", str(tmp / "exp"),
        "--train-cuts", str(tiny_corpus.cuts["train"]), "--bpe-model",
        str(tiny_corpus.bpe_model), "--plan", str(tmp / "w4a8.yaml"), "--no-progress")
    ckpt = tmp / "exp" / "final.pt"
    model = tmp / "model.safetensors"
    cli("q4asr.bin.export", "--checkpoint", str(ckpt), "--method", "qat", "--bpe-model",
        str(tiny_corpus.bpe_model), "--out", str(model))
    return tmp, ckpt, model


def kaldi_dir(tiny_corpus, tmp: Path, part: str = "test") -> Path:
    """A Kaldi data dir of a tiny-corpus part: wav.scp with paths relative to it, text."""
    d = tmp / f"kaldi_{part}"
    (d / "audio").mkdir(parents=True)
    recs = load_manifest(tiny_corpus.manifest_dir / f"synth_recordings_{part}.jsonl.gz")
    sups = load_manifest(tiny_corpus.manifest_dir / f"synth_supervisions_{part}.jsonl.gz")
    with open(d / "wav.scp", "w") as scp, open(d / "text", "w") as text:
        for rec, sup in zip(recs, sups):
            src = Path(rec.sources[0].source)
            (d / "audio" / src.name).write_bytes(src.read_bytes())
            scp.write(f"{rec.id} audio/{src.name}\n")
            text.write(f"{sup.recording_id} {sup.text}\n")
    (d / "utt2spk").write_text("".join(f"{r.id} spk\n" for r in recs))
    return d


def test_model_file_is_self_contained(qat_int4, tiny_corpus):
    _, _, model = qat_int4
    asr = load_asr_model(model)  # no BPE model, config or plan given
    assert asr.metadata["method"] == "qat"
    assert asr.tokenizer.vocab_size == tiny_corpus.bpe_vocab_size
    int8 = [k for k, v in asr.model.state_dict().items() if v.dtype in (torch.int8, torch.uint8)]
    assert int8, "no integer weights in the exported model"
    assert Path(f"{model}.size.json").is_file() and Path(f"{model}.size.txt").is_file()


def test_transcribe_equals_decoding_the_checkpoint(qat_int4, tiny_corpus, tmp_path):
    _, ckpt, model = qat_int4
    data = kaldi_dir(tiny_corpus, tmp_path)
    r = cli("q4asr.bin.transcribe", "--model", str(model), str(data), "--batch-size", "1",
            "--json", str(tmp_path / "wer.json"))
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    ids = [line.split()[0] for line in (data / "wav.scp").read_text().splitlines()]
    assert [x[0] for x in lines] == ids  # wav.scp order
    served = {x[0]: x[1] for x in lines}
    assert any(served.values()), "the model emits nothing; the comparison would be empty"
    summary = json.loads((tmp_path / "wer.json").read_text())
    assert set(summary) == {"wer", "errors", "words", "utts", "rtf", "scoring"}
    assert summary["utts"] == len(ids) and summary["rtf"] > 0
    assert summary["scoring"] == "normalized"
    assert "%WER" in r.stderr and "after normalisation" in r.stderr

    # the checkpoint, on features computed from the same audio (cuts without features)
    recs = load_manifest(tiny_corpus.manifest_dir / "synth_recordings_test.jsonl.gz")
    sups = load_manifest(tiny_corpus.manifest_dir / "synth_supervisions_test.jsonl.gz")
    cuts = tmp_path / "cuts.jsonl.gz"
    cutset = CutSet.from_manifests(recordings=recs, supervisions=sups)
    cutset.to_file(cuts)
    recording_of = {c.id: c.recording_id for c in cutset}
    cli("q4asr.bin.decode", "--model", str(ckpt), "--bpe-model", str(tiny_corpus.bpe_model),
        "--cuts", str(cuts), "--test-set", "test", "--max-duration", "0.1",
        "--out-dir", str(tmp_path / "dec"))
    recogs = (tmp_path / "dec" / "recogs-test-greedy_search.txt").read_text().splitlines()
    from_ckpt = {}
    for line in recogs:
        utt, field = line.split(":\t")
        if field.startswith("hyp="):
            from_ckpt[recording_of[utt]] = " ".join(ast.literal_eval(field[4:]))
    assert {k: served[k] for k in from_ckpt} == from_ckpt
    assert len(from_ckpt) == len(served)


def test_transcribe_audio_files_and_missing_file(qat_int4, tiny_corpus, tmp_path):
    _, _, model = qat_int4
    recs = load_manifest(tiny_corpus.manifest_dir / "synth_recordings_test.jsonl.gz")
    src = Path(next(iter(recs)).sources[0].source)
    # 8 kHz stereo: downmixed and resampled to the model's 16 kHz
    audio, sr = sf.read(src, dtype="float32")
    stereo = tmp_path / "stereo8k.wav"
    sf.write(stereo, torch.stack([torch.from_numpy(audio)[::2]] * 2, 1).numpy(), sr // 2)
    missing = tmp_path / "missing.wav"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    r = cli("q4asr.bin.transcribe", "--model", str(model), str(src), str(stereo),
            str(missing), str(broken), check=False)
    assert r.returncode == 1
    ids = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert ids == [src.stem, "stereo8k"]
    assert "missing.wav" in r.stderr and "broken.wav" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_file_that_is_no_model_is_named_as_such(tmp_path):
    from q4asr.checkpoint import save_checkpoint
    from q4asr.modelfile import load_asr_model

    config = tmp_path / "train.yaml"
    config.write_text("model: {d_model: 32}\n")
    with pytest.raises(ValueError, match="neither a model file .* nor a training"):
        load_asr_model(config)
    ckpt = save_checkpoint(tmp_path / "final.pt", {"model": {}})
    with pytest.raises(ValueError, match="a training checkpoint needs --bpe-model"):
        load_asr_model(ckpt)
    r = cli("q4asr.bin.transcribe", "--model", str(config), str(config), check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {config}: neither a model file (.safetensors, from q4asr-export) "
        "nor a training checkpoint (.pt)"
    ]


def test_decode_writes_result_files(qat_int4, tiny_corpus, tmp_path):
    _, _, model = qat_int4
    cli("q4asr.bin.decode", "--model", str(model), "--cuts", str(tiny_corpus.cuts["dev"]),
        "--test-set", "dev", "--method", "modified_beam_search", "--out-dir", str(tmp_path))
    s = json.loads((tmp_path / "dev-modified_beam_search.json").read_text())
    assert s["utts"] == len(tiny_corpus.texts["dev"]) and s["words"] > 0
    for f in ("recogs", "errs", "wer-summary"):
        assert (tmp_path / f"{f}-dev-modified_beam_search.txt").is_file()
    r = cli("q4asr.bin.decode", "--model", str(tmp_path / "none.safetensors"), "--cuts",
            str(tiny_corpus.cuts["dev"]), "--test-set", "dev", "--out-dir", str(tmp_path),
            check=False)
    assert r.returncode == 1 and "none.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_decode_of_several_sets_and_methods_in_one_process(qat_int4, tiny_corpus,
                                                           tmp_path):
    """Two test sets with both methods in one process (each set's encoder output
    shared): the same results as one set and one method at a time."""
    _, _, model = qat_int4
    sets = {"dev": tiny_corpus.cuts["dev"], "test": tiny_corpus.cuts["test"]}
    methods = ("greedy_search", "modified_beam_search")
    cli("q4asr.bin.decode", "--model", str(model), "--cuts", *map(str, sets.values()),
        "--test-set", *sets, "--method", *methods, "--out-dir", str(tmp_path / "all"))
    for name, cuts in sets.items():
        for m in methods:
            one = tmp_path / f"{name}-{m}"
            cli("q4asr.bin.decode", "--model", str(model), "--cuts", str(cuts),
                "--test-set", name, "--method", m, "--out-dir", str(one))
            tag = f"{name}-{m}"
            assert (tmp_path / "all" / f"recogs-{tag}.txt").read_text() == (
                one / f"recogs-{tag}.txt").read_text()
            got = json.loads((tmp_path / "all" / f"{tag}.json").read_text())
            assert got["per_utt"] == json.loads((one / f"{tag}.json").read_text())["per_utt"]
            assert got["utts"] == len(tiny_corpus.texts[name])
    # a missing manifest or a name short: one line, nothing decoded
    r = cli("q4asr.bin.decode", "--model", str(model), "--cuts", str(sets["dev"]),
            str(tmp_path / "none.jsonl.gz"), "--test-set", "dev", "x",
            "--out-dir", str(tmp_path / "bad"), check=False)
    assert r.returncode == 1 and "none.jsonl.gz: no such cut manifest" in r.stderr
    assert not (tmp_path / "bad").exists()
    r = cli("q4asr.bin.decode", "--model", str(model), "--cuts", *map(str, sets.values()),
            "--test-set", "dev", "--out-dir", str(tmp_path / "bad"), check=False)
    assert r.returncode == 2 and "give one name per manifest" in r.stderr


def test_lower_case_punctuated_text_scores_like_the_recipe_text(qat_int4, tiny_corpus,
                                                                 tmp_path):
    """A Kaldi ``text`` in lower case with punctuation scores as the upper-case original
    (the recipes' normalisation); ``--scoring verbatim`` compares words as written."""
    _, _, model = qat_int4
    data = kaldi_dir(tiny_corpus, tmp_path)
    lines = (data / "text").read_text().splitlines()
    wers = {}
    for name, text in (("upper", lines),
                       ("lower", [f"{u} {t.lower()}." for u, t in
                                  (ln.split(" ", 1) for ln in lines)])):
        (data / "text").write_text("\n".join(text) + "\n")
        for scoring in ("normalized", "verbatim"):
            out = tmp_path / f"{name}-{scoring}.json"
            r = cli("q4asr.bin.transcribe", "--model", str(model), str(data),
                    "--json", str(out), "--scoring", scoring)
            assert scoring in r.stderr or "normalisation" in r.stderr
            wers[name, scoring] = json.loads(out.read_text())
    assert wers["lower", "normalized"]["wer"] == wers["upper", "normalized"]["wer"]
    assert wers["upper", "verbatim"]["wer"] == wers["upper", "normalized"]["wer"]
    # verbatim: no lower-case reference word can match an upper-case hypothesis word
    lower = wers["lower", "verbatim"]
    assert lower["errors"] >= lower["words"] and lower["wer"] >= 100.0
