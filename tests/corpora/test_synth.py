"""Synthetic corpus: sentence split, held-out voices and engine, determinism, resume,
failures."""

import hashlib
import json
import logging
import os
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from lhotse import load_manifest

from q4asr.corpora import synth as synth_mod
from q4asr.corpora.synth import (
    SPLITS,
    SynthConfig,
    make_specs,
    synth_chunk,
    synthesize_corpus,
)
from q4asr.corpora.text import TextConfig, load_sentences

BASE_SPLITS = ("train", "dev", "test", "test_heldout")


@pytest.fixture(scope="module")
def sentences():
    return load_sentences(TextConfig(vocab_size=400, min_words=2, max_words=5), seed=7)


def test_specs_splits_by_sentence_and_holds_out_voices(sentences, tmp_path):
    cfg = SynthConfig(num_train=3 * len(sentences), num_dev=30, num_test=30, seed=7)
    by_split = make_specs(cfg, tmp_path, sentences)
    assert tuple(by_split) == BASE_SPLITS  # test_engine only with a held-out engine
    text = {s: {p.text for p in by_split[s]} for s in BASE_SPLITS}
    assert len(text["test"]) == 30 and len(text["dev"]) == 30
    assert not text["test"] & (text["train"] | text["dev"])
    assert not text["dev"] & text["train"]
    # train reuses its own sentences when asked for more utterances than exist
    assert len(by_split["train"]) == cfg.num_train
    assert text["train"] == set(sentences) - text["test"] - text["dev"]
    assert [p.text for p in by_split["test_heldout"]] == [
        p.text for p in by_split["test"]
    ]
    voices = {s: {(p.engine, p.voice) for p in by_split[s]} for s in BASE_SPLITS}
    seen = voices["train"] | voices["dev"] | voices["test"]
    assert not voices["test_heldout"] & seen
    variants = {v.split("+")[-1] for e, v in seen if e == "espeak"}
    held_variants = {
        v.split("+")[-1] for e, v in voices["test_heldout"] if e == "espeak"
    }
    assert not variants & held_variants
    assert len({p.engine for p in by_split["train"]}) == 3  # espeak, flite, festival
    assert len({p.utt_id for s in BASE_SPLITS for p in by_split[s]}) == sum(
        map(len, by_split.values())
    )


def test_specs_is_deterministic(sentences, tmp_path):
    cfg = SynthConfig(num_train=50, num_dev=5, num_test=5, seed=1)
    assert make_specs(cfg, tmp_path, sentences) == make_specs(cfg, tmp_path, sentences)
    other = make_specs(replace(cfg, seed=2), tmp_path, sentences)
    assert other != make_specs(cfg, tmp_path, sentences)


def _manifest_rows(root, split):
    recs = load_manifest(root / "manifests" / f"synth_recordings_{split}.jsonl.gz")
    sups = load_manifest(root / "manifests" / f"synth_supervisions_{split}.jsonl.gz")
    return [(r.id, r.num_samples, r.sampling_rate, r.num_channels) for r in recs], [
        (s.id, s.text, s.speaker, s.duration) for s in sups
    ]


def test_synthesis_deterministic_resumable(sentences, tmp_path):
    cfg = SynthConfig(num_train=8, num_dev=2, num_test=2, seed=5)
    a, b = tmp_path / "a", tmp_path / "b"
    sa = synthesize_corpus(cfg, a, sentences=sentences, progress=False)
    synthesize_corpus(cfg, b, sentences=sentences, progress=False)
    assert sa["num_failed"] == 0 and sa["num_utts"] == 14 and sa["audio_s"] > 5
    assert not (a / "manifests" / "synth_recordings_test_engine.jsonl.gz").exists()
    for split in BASE_SPLITS:
        assert _manifest_rows(a, split) == _manifest_rows(b, split)
        recs = load_manifest(a / "manifests" / f"synth_recordings_{split}.jsonl.gz")
        assert all(r.sampling_rate == 16000 and r.num_channels == 1 for r in recs)
        for wav in sorted((a / "wav" / split).iterdir()):  # sample for sample
            ours, theirs = (
                sf.read(wav, dtype="int16")[0],
                sf.read(b / "wav" / split / wav.name, dtype="int16")[0],
            )
            assert np.array_equal(ours, theirs), wav.name
    # resume: good files are kept, a corrupt one is synthesised again
    wavs = sorted((a / "wav" / "train").iterdir())
    mtimes = {w: os.stat(w).st_mtime_ns for w in wavs}
    wavs[0].write_bytes(b"not audio")
    again = synthesize_corpus(cfg, a, sentences=sentences, progress=False)
    assert again["num_failed"] == 0
    assert os.stat(wavs[0]).st_size > 1000
    assert all(os.stat(w).st_mtime_ns == mtimes[w] for w in wavs[1:])
    assert 0 < again["new_audio_s"] < 5
    assert _manifest_rows(a, "train") == _manifest_rows(b, "train")


def test_tts_failure_is_logged_and_skipped(sentences, tmp_path, caplog, monkeypatch):
    cfg = SynthConfig(num_train=2, num_dev=1, num_test=1, seed=0)
    good = make_specs(cfg, tmp_path, sentences)["train"][0]
    bad = replace(
        good,
        utt_id="train-bad",
        engine="festival",
        voice="no_such_voice",
        path=str(tmp_path / "wav" / "train" / "bad.flac"),
    )
    res = synth_chunk([bad, good])
    assert res[0][1] is None and "festival" in res[0][2]
    assert res[1][1] is not None and res[1][1].duration > 0.3

    def with_bad(config, out_dir, sents=None):
        by_split = make_specs(config, out_dir, sents)
        by_split["train"] = by_split["train"] + [bad]
        return by_split

    monkeypatch.setattr(synth_mod, "make_specs", with_bad)
    with caplog.at_level(logging.WARNING):
        stats = synthesize_corpus(cfg, tmp_path, sentences=sentences, progress=False)
    assert stats["num_failed"] == 1
    assert any(
        "train-bad" in r.getMessage() and "skipped" in r.getMessage()
        for r in caplog.records
    )
    sups = load_manifest(tmp_path / "manifests" / "synth_supervisions_train.jsonl.gz")
    assert [s.id for s in sups] == ["train-000000", "train-000001"]


def test_config_validation():
    with pytest.raises(ValueError, match="num_dev"):
        SynthConfig(num_train=1, num_dev=-1, num_test=0)
    with pytest.raises(ValueError, match="audio_format"):
        SynthConfig(num_train=1, num_dev=0, num_test=0, audio_format="mp3")


def test_gloss_utterances_follow_the_same_train_utterances(tmp_path):
    sents = [f"SENTENCE NUMBER {i}" for i in range(60)]
    glosses = [f"DEFINITION NUMBER {i}" for i in range(8)]
    cfg = SynthConfig(num_train=20, num_dev=4, num_test=6, seed=3)
    plain = make_specs(cfg, tmp_path, sents)
    more = make_specs(replace(cfg, num_train_glosses=5), tmp_path, sents, glosses)
    assert {s: more[s] for s in BASE_SPLITS if s != "train"} == {
        s: plain[s] for s in BASE_SPLITS if s != "train"
    }
    assert more["train"][:20] == plain["train"]
    assert [p.text for p in more["train"][20:]] == glosses[:5]
    assert [p.utt_id for p in more["train"][20:]] == [
        f"train-{i:06d}" for i in range(20, 25)
    ]
    with pytest.raises(ValueError, match="--num-train-glosses 9: only 8 WordNet"):
        make_specs(replace(cfg, num_train_glosses=9), tmp_path, sents, glosses)
    with pytest.raises(ValueError, match="num_train_glosses"):
        replace(cfg, num_train_glosses=-1)


def test_wordnet_glosses_use_only_the_sentences_words(sentences, tmp_path):
    cfg = SynthConfig(num_train=50, num_dev=10, num_test=10, seed=7,
                      num_train_glosses=40)  # fmt: skip
    train = make_specs(cfg, tmp_path, sentences)["train"]
    words = {w for s in sentences for w in s.split()}
    glosses = [p.text for p in train[50:]]
    assert len(glosses) == len(set(glosses)) == 40
    assert not set(glosses) & set(sentences)
    assert all(w in words for g in glosses for w in g.split())


def _spec_rows(by_split):
    return [
        (p.utt_id, p.text, p.engine, p.voice, p.speaker, p.speed, p.pitch, p.peak_db)
        for s in by_split
        for p in by_split[s]
    ]


def test_specs_without_heldout_engine_are_unchanged(tmp_path):
    """The voices, speeds and pitches of every utterance as the corpus had them before
    --heldout-engine existed (pinned for these sentences and the voices installed by
    tools/install.sh): the option must not move any existing random draw."""
    sents = [f"SENTENCE NUMBER {i}" for i in range(60)]
    cfg = SynthConfig(num_train=20, num_dev=4, num_test=6, seed=3)
    by_split = make_specs(cfg, tmp_path, sents)
    assert by_split == make_specs(replace(cfg, heldout_engine=None), tmp_path, sents)
    assert tuple(by_split) == BASE_SPLITS
    rows = _spec_rows(by_split)
    assert rows[:3] == [
        ("train-000000", "SENTENCE NUMBER 35", "espeak", "en+max", "espeak-en+max-v1",
         1.089, 24.0, 1.2),
        ("train-000001", "SENTENCE NUMBER 59", "espeak", "en-029+david",
         "espeak-en-029+david-v1", 0.866, 43.0, 5.1),
        ("train-000002", "SENTENCE NUMBER 21", "festival", "kal_diphone",
         "festival-kal_diphone-v2", 0.866, 277.3, 4.4),
    ]  # fmt: skip
    assert rows[-1] == (
        "test_heldout-000005", "SENTENCE NUMBER 5", "flite", "awb", "flite-awb-v1",
        1.226, -232.0, 3.5,
    )  # fmt: skip
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    assert digest == "8ca128fee19ef2748de58b5c802d71e3a635939eec6532fda95e2fcd982e2669"


@pytest.mark.parametrize("engine", ["espeak", "flite", "festival"])
def test_heldout_engine_only_in_test_engine(sentences, tmp_path, engine):
    cfg = SynthConfig(num_train=200, num_dev=20, num_test=40, seed=4)
    plain = make_specs(cfg, tmp_path, sentences)
    by_split = make_specs(replace(cfg, heldout_engine=engine), tmp_path, sentences)
    assert tuple(by_split) == (*BASE_SPLITS, "test_engine")
    assert tuple(by_split) == SPLITS
    engines = {s: {p.engine for p in by_split[s]} for s in by_split}
    for s in BASE_SPLITS:
        assert engine not in engines[s], s
        assert len(engines[s]) == 2, s  # both other engines still speak
        # the same sentences in the same order: only the voices moved
        assert [p.text for p in by_split[s]] == [p.text for p in plain[s]]
    assert engines["test_engine"] == {engine}
    assert [p.text for p in by_split["test_engine"]] == [
        p.text for p in by_split["test"]
    ]
    # the engine's seen and held-out voices alike
    seen, held = synth_mod.voice_groups()
    voices = {p.voice for p in by_split["test_engine"]}
    assert voices <= {v.name for v in seen[engine] + held[engine]}
    if engine != "espeak":  # a few voices: 40 utterances reach both groups
        assert voices & {v.name for v in seen[engine]}
        assert voices & {v.name for v in held[engine]}
    ids = [p.utt_id for s in by_split for p in by_split[s]]
    assert len(set(ids)) == len(ids)
    assert all("/wav/test_engine/" in p.path for p in by_split["test_engine"])


def test_heldout_engine_errors(sentences, tmp_path, monkeypatch, capsys):
    cfg = SynthConfig(num_train=10, num_dev=2, num_test=2, seed=0)
    with pytest.raises(ValueError, match="--heldout-engine 'mbrola': unknown engine"):
        replace(cfg, heldout_engine="mbrola")
    args = ["--out-dir", str(tmp_path), "--num-train", "4", "--num-dev", "1"]
    args += ["--num-test", "1"]
    with pytest.raises(SystemExit) as e:
        synth_mod.main([*args, "--heldout-engine", "mbrola"])
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("q4asr.corpora.synth: error: ")
    assert "--heldout-engine 'mbrola': unknown engine, expected one of" in msg
    # festival without voices: refused before anything is synthesised
    monkeypatch.setattr(synth_mod, "FESTIVAL_VOICE_DIRS", (tmp_path / "none",))
    fest = replace(cfg, heldout_engine="festival")
    with pytest.raises(ValueError, match="no voice of festival is installed"):
        make_specs(fest, tmp_path, sentences)
    with pytest.raises(SystemExit) as e:
        synth_mod.main([*args, "--heldout-engine", "festival"])
    msg = str(e.value.code)
    assert "\n" not in msg and "no voice of festival is installed" in msg
    assert not (tmp_path / "wav").exists()
    # the only engine installed cannot be held out
    seen, held = synth_mod.voice_groups()
    monkeypatch.setattr(
        synth_mod,
        "voice_groups",
        lambda **kw: ({"espeak": seen["espeak"]}, {"espeak": held["espeak"]}),
    )
    with pytest.raises(ValueError, match="--heldout-engine espeak: no other engine"):
        make_specs(replace(cfg, heldout_engine="espeak"), tmp_path, sentences)


def test_all_espeak_variants_widen_only_the_seen_voices(sentences, tmp_path):
    installed = synth_mod.installed_espeak_variants()
    assert set(synth_mod.ESPEAK_VARIANTS_SEEN) < set(installed)
    assert set(synth_mod.ESPEAK_VARIANTS_HELDOUT) < set(installed)
    demo_seen, demo_held = synth_mod.voice_groups()
    seen, held = synth_mod.voice_groups(espeak_variants="all")
    assert held == demo_held
    assert {e: v for e, v in seen.items() if e != "espeak"} == {
        e: v for e, v in demo_seen.items() if e != "espeak"
    }
    variants = {v.name.split("+")[1] for v in seen["espeak"]}
    assert variants == set(installed) - set(synth_mod.ESPEAK_VARIANTS_HELDOUT)
    cfg = SynthConfig(
        num_train=400, num_dev=10, num_test=20, seed=5, heldout_engine="festival"
    )
    demo = make_specs(cfg, tmp_path, sentences)
    wide = make_specs(replace(cfg, espeak_variants="all"), tmp_path, sentences)
    # the held-out voices' and the held-out engine's test audio stay the same
    assert wide["test_heldout"] == demo["test_heldout"]
    assert wide["test_engine"] == demo["test_engine"]
    assert [p.text for p in wide["train"]] == [p.text for p in demo["train"]]
    new = {p.voice for p in wide["train"] if p.engine == "espeak"} - {
        v.name for v in demo_seen["espeak"]
    }
    assert new  # voices the demo's corpus does not have
    # espeak-ng speaks an unknown variant in its default voice without a word: a new
    # variant's audio must differ from the default's
    voice = sorted(new)[0]
    lang = voice.split("+")[0]
    audio = {}
    for v in (lang, voice):
        out = tmp_path / f"{v}.wav"
        synth_mod.subprocess.run(
            ["espeak-ng", "-v", v, "-w", str(out), "one two three"], check=True
        )
        audio[v] = out.read_bytes()
    assert audio[lang] != audio[voice]
    with pytest.raises(ValueError, match="--espeak-variants 'some': expected one of"):
        replace(cfg, espeak_variants="some")


def test_heldout_engine_corpus_synthesised(sentences, tmp_path):
    cfg = SynthConfig(
        num_train=4, num_dev=1, num_test=2, seed=2, heldout_engine="flite"
    )
    stats = synthesize_corpus(cfg, tmp_path, sentences=sentences, progress=False)
    assert stats["num_failed"] == 0 and stats["num_utts"] == 11
    engines = {}
    for split in SPLITS:
        sups = load_manifest(
            tmp_path / "manifests" / f"synth_supervisions_{split}.jsonl.gz"
        )
        recs = load_manifest(
            tmp_path / "manifests" / f"synth_recordings_{split}.jsonl.gz"
        )
        assert [r.id for r in recs] == [s.id for s in sups]
        assert all(r.duration > 0.3 for r in recs)
        engines[split] = {s.custom["engine"] for s in sups}
    assert engines["test_engine"] == {"flite"}
    assert all("flite" not in engines[s] for s in BASE_SPLITS)
    assert len(list((tmp_path / "wav" / "test_engine").iterdir())) == 2


def test_pico_in_festivals_place_keeps_the_paired_test_sets(sentences, tmp_path):
    """--engines espeak flite pico with festival held out: pico takes a share of train,
    dev and test; test_heldout and test_engine are the same utterances as without it."""
    cfg = SynthConfig(
        num_train=400, num_dev=20, num_test=40, seed=5, heldout_engine="festival"
    )
    plain = make_specs(cfg, tmp_path, sentences)
    pico = make_specs(
        replace(cfg, engines=("espeak", "flite", "pico")), tmp_path, sentences
    )
    assert pico["test_heldout"] == plain["test_heldout"]
    assert pico["test_engine"] == plain["test_engine"]
    for s in ("train", "dev", "test"):
        assert [p.text for p in pico[s]] == [p.text for p in plain[s]]
    engines = {p.engine for p in pico["train"]}
    assert engines == {"espeak", "flite", "pico"}
    voices = {p.voice for p in pico["train"] if p.engine == "pico"}
    assert voices == set(synth_mod.PICO_SEEN)
    assert "pico" not in {p.engine for p in plain["train"]}
    # the default engines are the demo's: naming them changes nothing
    assert make_specs(replace(cfg, engines=synth_mod.DEFAULT_ENGINES), tmp_path,
                      sentences) == plain  # fmt: skip


def test_pico_audio_deterministic_and_its_speed_applied(sentences, tmp_path):
    cfg = SynthConfig(num_train=60, num_dev=2, num_test=2, seed=5,
                      engines=("espeak", "pico"))  # fmt: skip
    specs = [p for p in make_specs(cfg, tmp_path, sentences)["train"]
             if p.engine == "pico"][:2]  # fmt: skip
    assert specs
    res = synth_chunk(specs)
    assert all(rec is not None and err == "" for _, rec, err in res)
    first = [open(p.path, "rb").read() for p in specs]
    for p in specs:
        os.remove(p.path)
    synth_chunk(specs)
    assert [open(p.path, "rb").read() for p in specs] == first
    # one sentence by one voice, slow and fast: Pico's rate follows the spec's speed
    slow = replace(specs[0], speed=0.8, pitch=0.0, path=str(tmp_path / "slow.flac"))
    fast = replace(slow, speed=1.25, path=str(tmp_path / "fast.flac"))
    synth_chunk([slow, fast])
    d_slow, d_fast = (sf.info(p.path).duration for p in (slow, fast))
    assert 1.3 < d_slow / d_fast < 1.9, (d_slow, d_fast)
    audio, sr = sf.read(slow.path)
    assert sr == 16000 and np.abs(audio).max() > 0.1


def test_engines_option_errors(sentences, tmp_path, monkeypatch):
    cfg = SynthConfig(num_train=10, num_dev=2, num_test=2, seed=0)
    with pytest.raises(ValueError, match="--engines 'mbrola': unknown engine"):
        replace(cfg, engines=("espeak", "mbrola"))
    with pytest.raises(ValueError, match="expected one or more different engines"):
        replace(cfg, engines=("espeak", "espeak"))
    args = ["--out-dir", str(tmp_path), "--num-train", "4", "--num-dev", "1"]
    args += ["--num-test", "1", "--engines", "espeak", "pico"]

    def no_pico(language):
        raise ImportError("No module named 'ttspico'")

    monkeypatch.setattr(synth_mod, "_pico_engine", no_pico)
    with pytest.raises(ValueError, match="--engines pico: no voice of pico"):
        make_specs(replace(cfg, engines=("espeak", "pico")), tmp_path, sentences)
    with pytest.raises(SystemExit) as e:
        synth_mod.main(args)
    msg = str(e.value.code)
    assert "\n" not in msg and "--engines pico: no voice of pico is installed" in msg
    assert not (tmp_path / "wav").exists()
