"""The shared tiny_corpus fixture builds real audio, features and a BPE model."""

from lhotse import load_manifest

from q4asr.data.tokenizer import Tokenizer


def test_tiny_corpus_is_complete(tiny_corpus):
    for part, path in tiny_corpus.cuts.items():
        cuts = load_manifest(path)
        assert len(cuts) == len(tiny_corpus.texts[part]) > 0, part
        feats = cuts[0].load_features()
        assert feats.ndim == 2 and feats.shape[1] == tiny_corpus.num_mel_bins
        assert abs(feats.shape[0] - round(cuts[0].duration * 100)) <= 1
    assert len(tiny_corpus.texts["train"]) == 40
    tok = Tokenizer(tiny_corpus.bpe_model)
    assert tok.blank_id == 0
    ids = tok.encode(tiny_corpus.texts["test"])
    assert tok.decode(ids) == tiny_corpus.texts["test"]
