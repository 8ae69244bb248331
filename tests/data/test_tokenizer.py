"""The tokenizer encodes text by text exactly as sentencepiece's batch call does."""

from q4asr.data.tokenizer import Tokenizer


def test_encode_matches_sentencepiece_batch_call(tiny_corpus):
    tok = Tokenizer(tiny_corpus.bpe_model)
    texts = tiny_corpus.texts["train"] + [""]
    ids = tok.encode(texts)
    assert ids == tok.sp.encode(texts, out_type=int)
    assert ids[-1] == [] and all(ids[:-1])
    assert tok.decode(ids[:-1]) == texts[:-1]
