"""Training and validation data: lhotse cuts -> padded fbank batches with token ids.

- :class:`CutFilter` drops unusable cuts lazily, before batching (no transcript,
  too short for the x4 subsampling, more tokens than encoder frames, too long,
  no features or audio); every dropped cut is logged with its id and reason.
- :class:`AsrDataset` turns a ``CutSet`` mini-batch into tensors, reading
  precomputed features or computing fbank on the fly; a cut whose features or
  audio cannot be read is skipped and logged, never fatal.
- :func:`make_sampler` builds a seeded lhotse ``DynamicBucketingSampler``
  (distributed when ``world_size > 1``); :func:`sampler_state` /
  :func:`restore_sampler` save and restore its exact position for resuming.
- :class:`SpecAugmenter` applies lhotse's ``SpecAugment`` in the training
  process (so its randomness follows the restored RNG state on resume), after
  :func:`warp_mel_axis` when ``freq_warp`` is set.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, SpecAugment
from lhotse.utils import compute_num_frames

from q4asr.config import SpecAugmentConfig
from q4asr.data.tokenizer import Tokenizer
from q4asr.model.conformer import subsampled_lengths

log = logging.getLogger(__name__)

FRAME_SHIFT = 0.01  # seconds; the fbank frame shift used throughout q4asr
MIN_FRAMES = 7  # the conv2d x4 subsampling needs at least this many input frames


def subsampled_length(num_frames: int) -> int:
    """Encoder frames after the model's conv2d x4 subsampling."""
    return int(subsampled_lengths(torch.tensor([num_frames]))[0])


def cut_text(cut: Cut) -> str:
    """The cut's transcript: its supervisions' texts joined by spaces."""
    return " ".join((s.text or "").strip() for s in cut.supervisions).strip()


def cut_num_frames(cut: Cut) -> int:
    """Feature frames of ``cut`` (from its features, else from its duration)."""
    if cut.has_features and cut.num_frames is not None:
        return int(cut.num_frames)
    sr = cut.sampling_rate if cut.has_recording else 16000
    return compute_num_frames(cut.duration, FRAME_SHIFT, sr)


class CutFilter:
    """A predicate for ``sampler.filter``: False for cuts training cannot use.

    Each rejected cut is logged once with its id and the reason; ``rejected`` holds
    ``{cut_id: reason}`` for this process.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        need_features: bool,
        max_duration: float = 30.0,
        name: str = "train",
    ):
        self.tokenizer = tokenizer
        self.need_features = need_features
        self.max_duration = max_duration
        self.name = name
        self.rejected: dict[str, str] = {}

    def reason(self, cut: Cut) -> str | None:
        """Why ``cut`` cannot be used, or None when it can."""
        text = cut_text(cut)
        if not text:
            return "empty transcript"
        if self.need_features and not cut.has_features:
            return "no precomputed features"
        if not self.need_features and not cut.has_recording:
            return "no recording to compute features from"
        if cut.duration > self.max_duration:
            return (
                f"duration {cut.duration:.2f}s > max_utterance_duration "
                f"{self.max_duration:.2f}s"
            )
        t = cut_num_frames(cut)
        if t < MIN_FRAMES:
            return f"too short: {t} frames < {MIN_FRAMES}"
        u = len(self.tokenizer.encode([text])[0])
        t_enc = subsampled_length(t)
        if u > t_enc:
            return f"{u} tokens > {t_enc} encoder frames"
        return None

    def __call__(self, cut: Cut) -> bool:
        r = self.reason(cut)
        if r is None:
            return True
        if cut.id not in self.rejected:
            self.rejected[cut.id] = r
            log.warning("%s: skipping cut %s: %s", self.name, cut.id, r)
        return False


class AsrDataset(torch.utils.data.Dataset):
    """Map a ``CutSet`` mini-batch to a padded batch.

    Returns a dict with
      - ``features``: (N, T, F) float, zero-padded log-mel filterbanks
      - ``feature_lens``: (N,) int64, valid frames per utterance
      - ``tokens``: list of N token-id lists; ``texts``, ``cut_ids``: N strings
      - ``duration``: float, seconds of audio in the batch
      - ``skipped``: ``{cut_id: reason}`` for cuts that could not be read
    ``N`` may be 0 when every cut in the batch failed to load.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        on_the_fly_features: bool = False,
        num_mel_bins: int = 80,
    ):
        self.tokenizer = tokenizer
        self.num_mel_bins = num_mel_bins
        self.extractor = None
        if on_the_fly_features:
            from q4asr.data.features import fbank_extractor

            self.extractor = fbank_extractor(num_mel_bins)

    def _load(self, cut: Cut) -> torch.Tensor:
        if self.extractor is not None:
            # the same path as q4asr.data.features: 16 kHz, resampled when needed
            from q4asr.data.audio import resample
            from q4asr.data.features import SAMPLE_RATE

            samples = torch.from_numpy(cut.load_audio())
            samples = resample(samples, cut.sampling_rate, SAMPLE_RATE)
            feats = self.extractor.extract(samples.numpy(), SAMPLE_RATE)
        else:
            feats = cut.load_features()
        feats = torch.as_tensor(feats, dtype=torch.float32)
        if feats.ndim != 2 or feats.shape[1] != self.num_mel_bins:
            raise ValueError(
                f"features of shape {tuple(feats.shape)}, expected "
                f"(T, {self.num_mel_bins})"
            )
        if feats.shape[0] < MIN_FRAMES:
            raise ValueError(f"only {feats.shape[0]} frames")
        if not torch.isfinite(feats).all():
            raise ValueError("non-finite feature values")
        return feats

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        feats, kept, skipped = [], [], {}
        for cut in cuts:
            try:
                feats.append(self._load(cut))
                kept.append(cut)
            except Exception as e:  # unreadable or corrupt data: skip, never crash
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                what = "audio" if self.extractor is not None else "features"
                skipped[cut.id] = f"cannot read {what}: {msg}"
                log.warning("skipping cut %s: %s", cut.id, skipped[cut.id])
        texts = [cut_text(c) for c in kept]
        n = len(kept)
        t_max = max((f.shape[0] for f in feats), default=0)
        x = torch.zeros(n, t_max, self.num_mel_bins)
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = f
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        return {
            "features": x,
            "feature_lens": lens,
            "tokens": self.tokenizer.encode(texts) if texts else [],
            "texts": texts,
            "cut_ids": [c.id for c in kept],
            "duration": float(sum(c.duration for c in kept)),
            "skipped": skipped,
        }


def warp_mel_axis(feats: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Vocal tract length perturbation on log-mel features: utterance ``n``'s bin
    ``i`` takes the value at bin ``i * factors[n]`` (linear interpolation) up to a
    boundary, above which the map runs straight to the top bin, so the band stays
    the band (Jaitly and Hinton's piecewise-linear warp, on the mel axis). A factor
    above 1 moves spectral peaks down (a longer vocal tract), below 1 up.

    feats: (N, T, F) float, factors: (N,) float -> (N, T, F) float.
    """
    assert feats.ndim == 3 and factors.shape == (feats.shape[0],), (
        feats.shape,
        factors.shape,
    )
    top = feats.shape[2] - 1
    i = torch.arange(top + 1, dtype=torch.float32, device=feats.device).unsqueeze(0)
    a = factors.to(feats.device, torch.float32).unsqueeze(1)  # (N, 1)
    bound = 0.85 * top * torch.clamp(1.0 / a, max=1.0)  # (N, 1): bound * a < top
    above = bound * a + (top - bound * a) * (i - bound) / (top - bound)
    src = torch.where(i <= bound, i * a, above).clamp(0, top)  # (N, F)
    lo = src.floor().long().clamp(max=top - 1)
    w = (src - lo).to(feats.dtype).unsqueeze(1)  # (N, 1, F)
    idx = lo.unsqueeze(1).expand(-1, feats.shape[1], -1)
    return torch.lerp(feats.gather(2, idx), feats.gather(2, idx + 1), w)


class SpecAugmenter:
    """lhotse ``SpecAugment`` on a padded batch, warping only the valid frames;
    first each utterance's mel axis by a random factor when ``cfg.freq_warp`` > 0."""

    def __init__(self, cfg: SpecAugmentConfig):
        self.transform = SpecAugment(**cfg.kwargs())
        self.freq_warp = cfg.freq_warp

    def __call__(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        """feats: (N, T, F) float, feat_lens: (N,) int64 -> (N, T, F) float."""
        assert feats.ndim == 3, feats.shape
        assert feat_lens.shape == (feats.shape[0],), (feat_lens.shape, feats.shape)
        n = feats.shape[0]
        if self.freq_warp:
            factors = 1.0 + self.freq_warp * (2.0 * torch.rand(n) - 1.0)
            feats = warp_mel_axis(feats, factors)
        segments = torch.stack(
            [torch.arange(n), torch.zeros(n, dtype=torch.int64), feat_lens.cpu()], dim=1
        )
        return self.transform(feats, supervision_segments=segments)


@dataclass
class DataSpec:
    """Everything needed to rebuild identical loaders (training and validation)."""

    max_duration: float
    num_buckets: int
    seed: int
    num_workers: int = 0
    on_the_fly_features: bool = False
    num_mel_bins: int = 80
    max_utterance_duration: float = 30.0


def load_cuts(path: str | Path) -> CutSet:
    """Lazily open a cut manifest; a clear error if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such cut manifest")
    return CutSet.from_jsonl_lazy(path)


def make_sampler(
    cuts: CutSet,
    spec: DataSpec,
    cut_filter: CutFilter,
    *,
    shuffle: bool,
    world_size: int = 1,
    rank: int = 0,
    duration_bins: list[float] | None = None,
) -> DynamicBucketingSampler:
    """A seeded ``DynamicBucketingSampler`` over the cuts ``cut_filter`` accepts;
    its buckets estimated from the first cuts unless ``duration_bins`` are given."""
    sampler = DynamicBucketingSampler(
        cuts,
        max_duration=spec.max_duration,
        num_buckets=spec.num_buckets,
        duration_bins=duration_bins,
        shuffle=shuffle,
        drop_last=False,
        world_size=world_size,
        rank=rank,
        seed=spec.seed,
    )
    sampler.filter(cut_filter)
    return sampler


@dataclass
class Loader:
    """A DataLoader with the sampler and filter behind it."""

    loader: torch.utils.data.DataLoader
    sampler: DynamicBucketingSampler
    cut_filter: CutFilter


def make_loader(
    cuts_path: str | Path,
    tokenizer: Tokenizer,
    spec: DataSpec,
    *,
    train: bool,
    world_size: int = 1,
    rank: int = 0,
) -> Loader:
    """A DataLoader of :class:`AsrDataset` batches, with its sampler and filter.

    Training loaders shuffle (seeded); validation loaders keep manifest order. The
    loader has its own seeded generator, so creating its iterator does not draw
    from the global torch RNG (a resumed run stays identical to an uninterrupted
    one).
    """
    cuts = load_cuts(cuts_path)
    cut_filter = CutFilter(
        tokenizer,
        need_features=not spec.on_the_fly_features,
        max_duration=spec.max_utterance_duration,
        name=f"{Path(cuts_path).name}",
    )
    sampler = make_sampler(
        cuts, spec, cut_filter, shuffle=train, world_size=world_size, rank=rank
    )
    dataset = AsrDataset(
        tokenizer,
        on_the_fly_features=spec.on_the_fly_features,
        num_mel_bins=spec.num_mel_bins,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=spec.num_workers,
        generator=torch.Generator().manual_seed(spec.seed),
    )
    return Loader(loader, sampler, cut_filter)


def sampler_state(
    sampler: DynamicBucketingSampler, epoch: int, batches_done: int
) -> dict[str, Any]:
    """The sampler's state after the training loop consumed ``batches_done`` batches.

    DataLoader workers prefetch batches, so the sampler itself has run ahead of
    the training loop; the state is rewritten to count only consumed batches, so
    that :func:`restore_sampler` continues with exactly the next unseen batch.
    A sampler that is not a lhotse one (``q4asr.data.shar.SharStream``) gives its own
    state.
    """
    if not isinstance(sampler, DynamicBucketingSampler):
        return sampler.state_dict(epoch, batches_done)
    sd = copy.deepcopy(sampler.state_dict())
    sd["epoch"] = epoch
    stats = sd["diagnostics"]["stats_per_epoch"]
    ep = dict(
        stats.get(epoch)
        or {"epoch": epoch, "kept_cuts": 0, "discarded_cuts": 0, "discarded_batches": 0}
    )
    ep.update(epoch=epoch, kept_batches=batches_done, discarded_batches=0)
    stats[epoch] = ep
    sd["diagnostics"]["current_epoch"] = epoch
    sd["batches_done"] = batches_done
    return sd


def restore_sampler(sampler: DynamicBucketingSampler, state: dict[str, Any]) -> None:
    """Fast-forward ``sampler`` to the position saved by :func:`sampler_state`."""
    if not isinstance(sampler, DynamicBucketingSampler):
        sampler.load_state_dict(state)
        return
    if "format" in state:
        raise ValueError(
            f"the checkpoint's sampler state is a {state['format']} stream's; "
            "resume with the same --train-cuts"
        )
    sd = copy.deepcopy(state)
    sd.pop("batches_done", None)
    sampler.load_state_dict(sd)
