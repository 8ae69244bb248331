"""Recognition: features -> encoder -> search -> text, batched; shared by q4asr-decode
and q4asr-transcribe."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lhotse.dataset import SimpleCutSampler
from tqdm import tqdm

from q4asr.data.datamodule import MIN_FRAMES, AsrDataset, cut_text, load_cuts
from q4asr.decode.search import greedy_search, modified_beam_search
from q4asr.modelfile import AsrModel

log = logging.getLogger(__name__)

METHODS = ("greedy_search", "modified_beam_search")


@torch.no_grad()
def recognize_batch(asr: AsrModel, feats: torch.Tensor, feat_lens: torch.Tensor,
                    method: str = "greedy_search", beam: int = 4) -> list[str]:
    """feats: (N, T, F) float; feat_lens: (N,) int64 -> N hypotheses (text).

    An utterance too short for the subsampling gets an empty hypothesis.
    """
    return recognize_batch_methods(asr, feats, feat_lens, (method,), beam)[method][0]


@torch.no_grad()
def recognize_batch_methods(asr: AsrModel, feats: torch.Tensor, feat_lens: torch.Tensor,
                            methods: Sequence[str], beam: int = 4
                            ) -> dict[str, tuple[list[str], float]]:
    """:func:`recognize_batch` with each of ``methods`` on one encoder output:
    {method: (N hypotheses, seconds)}, the seconds being the encoder's plus that
    method's search (what decoding with that method alone takes)."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"decoding method {method!r} is not one of {METHODS}")
    assert feats.ndim == 3 and feat_lens.shape == (feats.shape[0],), feats.shape
    start = time.perf_counter()
    keep = (feat_lens >= MIN_FRAMES).nonzero().flatten()
    if len(keep) > 0:
        x, x_lens = feats[keep], feat_lens[keep]
        x = x[:, : int(x_lens.max())]
        enc, enc_lens = asr.model.encode(x, x_lens)
    enc_s = time.perf_counter() - start
    res = {}
    for method in methods:
        start = time.perf_counter()
        out = [""] * feats.shape[0]
        if len(keep) > 0:
            if method == "greedy_search":
                tokens = greedy_search(asr.model, enc, enc_lens)
            else:
                tokens = modified_beam_search(asr.model, enc, enc_lens, beam=beam)
            for i, text in zip(keep.tolist(), asr.tokenizer.decode(tokens)):
                out[i] = text
        res[method] = out, enc_s + time.perf_counter() - start
    return res


@dataclass
class DecodeResult:
    ids: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cut id -> reason
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        return self.decode_seconds / max(self.audio_seconds, 1e-9)


def decode_cuts(asr: AsrModel, cuts_path: str | Path,
                methods: Sequence[str] = ("greedy_search",), beam: int = 4,
                max_duration: float = 200.0) -> dict[str, DecodeResult]:
    """Decode every cut of a manifest (precomputed features when the cuts have them,
    else fbank on the fly) with each of ``methods``, on one encoder pass:
    {method: result}. A cut that cannot be read is logged and scored as an empty
    hypothesis (all its words deleted), never dropped."""
    cuts_path = Path(cuts_path)
    cuts = load_cuts(cuts_path)
    first = next(iter(cuts), None)
    if first is None:
        raise ValueError(f"{cuts_path}: no cuts")
    dataset = AsrDataset(asr.tokenizer, on_the_fly_features=not first.has_features,
                         num_mel_bins=int(asr.feature_config.get("num_mel_bins", 80)))
    sampler = SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False)
    results = {m: DecodeResult() for m in methods}
    bar = tqdm(desc=f"decode {cuts_path.name}", unit="utt", leave=False)
    for batch_cuts in sampler:
        batch = dataset[batch_cuts]
        hyps = (recognize_batch_methods(asr, batch["features"], batch["feature_lens"],
                                        methods, beam)
                if batch["cut_ids"] else {m: ([], 0.0) for m in methods})
        skipped = [c for c in batch_cuts if c.id in batch["skipped"]]
        for method, res in results.items():
            for cut in skipped:
                res.failed[cut.id] = batch["skipped"][cut.id]
                res.ids.append(cut.id)
                res.refs.append(cut_text(cut))
                res.hyps.append("")
            texts, seconds = hyps[method]
            res.decode_seconds += seconds
            res.audio_seconds += batch["duration"]
            res.ids += batch["cut_ids"]
            res.refs += batch["texts"]
            res.hyps += texts
        bar.update(len(batch_cuts))
    bar.close()
    return results
