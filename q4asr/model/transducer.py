"""Stateless decoder, joiner and the pruned transducer with its losses.

Quantizable modules (names as seen from the Transducer): ``decoder.embedding``
(nn.Embedding), ``decoder.conv`` (depthwise nn.Conv1d over the last
``context_size`` tokens), ``joiner.encoder_proj``, ``joiner.decoder_proj``,
``joiner.output``, ``simple_am_proj``, ``simple_lm_proj`` and ``ctc_output``
(nn.Linear), plus every encoder module (see ``q4asr.model.conformer``).

The loss follows icefall's ``pruned_transducer_stateless``: the "simple" loss
(``rnnt_loss_smoothed`` on separately projected encoder and decoder outputs,
smoothed by ``lm_scale``/``am_scale``) yields the gradients that pick a
``prune_range``-wide band of symbol positions per frame
(``get_rnnt_prune_ranges``); the joiner runs only inside that band
(``do_rnnt_pruning``) for the full ``rnnt_loss_pruned``. An optional CTC head on
the encoder output adds ``ctc_weight`` times the CTC loss; it gives the encoder a
direct alignment signal early in training, when the transducer alone is slow to
find one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from q4asr.model import rnnt_backend
from q4asr.model.config import ModelConfig
from q4asr.model.conformer import ConformerEncoder


class Decoder(nn.Module):
    """Stateless prediction network: embedding + depthwise Conv1d over the last
    ``context_size`` tokens + ReLU. Blank (id 0) is the initial context, in training
    (left padding) and in decoding (the search starts from ``[blank] * context_size``).
    """

    def __init__(
        self, vocab_size: int, decoder_dim: int, context_size: int, blank_id: int = 0
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.context_size = context_size
        self.blank_id = blank_id
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        if context_size > 1:
            self.conv = nn.Conv1d(
                decoder_dim,
                decoder_dim,
                kernel_size=context_size,
                groups=decoder_dim,
                bias=False,
            )
        self.act = nn.ReLU()

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """y: (N, U) int64 token ids.

        need_pad=True (training): y is ``[blank] + targets``; it is left-padded with
        ``context_size - 1`` blanks so that output u sees tokens u-context+1..u
        -> (N, U, decoder_dim).
        need_pad=False (search): y holds exactly the last ``context_size`` tokens of
        each hypothesis -> (N, 1, decoder_dim).
        """
        assert y.ndim == 2 and y.dtype == torch.int64, (y.shape, y.dtype)
        if need_pad and self.context_size > 1:
            y = F.pad(y, (self.context_size - 1, 0), value=self.blank_id)
        elif not need_pad:
            assert y.shape[1] == self.context_size, (y.shape, self.context_size)
        emb = self.embedding(y)  # (N, U + context_size - 1, D)
        if self.context_size > 1:
            emb = self.conv(emb.transpose(1, 2)).transpose(1, 2)
        return self.act(emb)


class Joiner(nn.Module):
    """output(tanh(encoder_proj(enc) + decoder_proj(dec)))."""

    def __init__(
        self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int
    ) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output = nn.Linear(joiner_dim, vocab_size)

    def forward(
        self, enc: torch.Tensor, dec: torch.Tensor, project_input: bool = True
    ) -> torch.Tensor:
        """enc: (..., encoder_dim) and dec: (..., decoder_dim), broadcastable
        (or both (..., joiner_dim) when project_input=False) -> (..., vocab_size)."""
        if project_input:
            enc = self.encoder_proj(enc)
            dec = self.decoder_proj(dec)
        return self.output(torch.tanh(enc + dec))


def pad_targets(
    targets: list[list[int]], vocab_size: int, pad: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """targets: N lists of token ids -> (N, S_max) int64 padded with ``pad``,
    (N,) int64 lengths. Raises ValueError naming the utterance index on an empty
    target or a token outside [1, vocab_size)."""
    lens = []
    for i, t in enumerate(targets):
        if len(t) == 0:
            raise ValueError(f"utterance {i}: empty target token sequence")
        bad = [tok for tok in t if not (isinstance(tok, int) and 0 < tok < vocab_size)]
        if bad:
            raise ValueError(
                f"utterance {i}: token id(s) {bad[:5]} outside [1, {vocab_size - 1}] "
                "(blank 0 may not appear in targets)"
            )
        lens.append(len(t))
    y = torch.full((len(targets), max(lens)), pad, dtype=torch.int64)
    for i, t in enumerate(targets):
        y[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
    return y, torch.tensor(lens, dtype=torch.int64)


def normalize_features(feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean and variance normalisation of each feature bin.

    feats: (N, T, F) float; feat_lens: (N,) int64 -> (N, T, F) float with zero mean
    and unit variance over each utterance's valid frames, and zeros at padding.
    Stateless, so training, decoding and exported models normalise identically.
    """
    assert feats.ndim == 3 and feat_lens.shape == (feats.shape[0],), feats.shape
    valid = (
        torch.arange(feats.shape[1], device=feats.device)[None, :] < feat_lens[:, None]
    ).unsqueeze(-1)  # (N, T, 1)
    count = feat_lens.clamp(min=1).to(feats.dtype)[:, None, None]
    x = feats.masked_fill(~valid, 0.0)
    mean = x.sum(1, keepdim=True) / count
    var = ((x - mean).masked_fill(~valid, 0.0) ** 2).sum(1, keepdim=True) / count
    return ((x - mean) / (var + 1e-5).sqrt()).masked_fill(~valid, 0.0)


def loss_scales(warmup: float, simple_loss_scale: float) -> tuple[float, float]:
    """Weights of (simple, pruned) loss at a warm-up point (icefall's schedule).

    warmup 0: simple loss only (1.0, 0.0); both scales move linearly to
    (simple_loss_scale, 1.0) at warmup >= 1.
    """
    w = min(max(float(warmup), 0.0), 1.0)
    return 1.0 - w * (1.0 - simple_loss_scale), w


class Transducer(nn.Module):
    """Conformer encoder + stateless decoder + joiner, trained with pruned RNN-T
    (+ optional CTC)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blank_id = cfg.blank_id
        self.context_size = cfg.context_size
        self.vocab_size = cfg.vocab_size
        self.encoder = ConformerEncoder(cfg)
        self.decoder = Decoder(
            cfg.vocab_size, cfg.decoder_dim, cfg.context_size, cfg.blank_id
        )
        self.joiner = Joiner(
            cfg.d_model, cfg.decoder_dim, cfg.joiner_dim, cfg.vocab_size
        )
        self.simple_am_proj = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.simple_lm_proj = nn.Linear(cfg.decoder_dim, cfg.vocab_size)
        if cfg.ctc_weight > 0:
            self.ctc_output = nn.Linear(cfg.d_model, cfg.vocab_size)
        else:
            self.ctc_output = None

    def encode(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats: (N, T, num_mel_bins) float; feat_lens: (N,) int64
        -> enc: (N, T', d_model) float, enc_lens: (N,) int64, T' ~ T / 4."""
        if feats.ndim != 3 or feats.shape[2] != self.cfg.num_mel_bins:
            raise ValueError(
                f"feats must be (N, T, {self.cfg.num_mel_bins}), "
                f"got {tuple(feats.shape)}"
            )
        if feat_lens.shape != (feats.shape[0],):
            raise ValueError(
                f"feat_lens must be ({feats.shape[0]},), got {tuple(feat_lens.shape)}"
            )
        short = (feat_lens < 7).nonzero().flatten().tolist()
        if short:
            raise ValueError(
                f"utterance {short[0]}: {int(feat_lens[short[0]])} frames, "
                "the x4 subsampling needs at least 7"
            )
        if int(feat_lens.max()) > feats.shape[1]:
            raise ValueError(
                f"feat_lens max {int(feat_lens.max())} exceeds feats length "
                f"{feats.shape[1]}"
            )
        feat_lens = feat_lens.to(torch.int64)
        return self.encoder(normalize_features(feats, feat_lens), feat_lens)

    def forward(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        targets: list[list[int]],
        warmup: float = 1.0,
    ) -> dict[str, torch.Tensor | int]:
        """feats: (N, T, num_mel_bins) float; feat_lens: (N,) int64; targets: N
        lists of token ids (no blank); warmup: 0 at the start of training, >= 1
        once warmed up.

        Returns "loss" (scalar to backprop, summed over utterances),
        "simple_loss", "pruned_loss", "ctc_loss" (detached scalar sums; ctc_loss
        is 0 when the CTC head is off) and "num_frames" (int, encoder frames).
        """
        if len(targets) != feats.shape[0]:
            raise ValueError(
                f"{len(targets)} target sequences for a batch of {feats.shape[0]}"
            )
        enc, enc_lens = self.encode(feats, feat_lens)
        y, y_lens = pad_targets(targets, self.vocab_size, pad=self.blank_id)
        y, y_lens = y.to(enc.device), y_lens.to(enc.device)
        n, t, _ = enc.shape
        s = y.shape[1]
        if s > t:
            i = int(y_lens.argmax())
            raise ValueError(
                f"utterance {i}: {int(y_lens[i])} tokens but the longest utterance "
                f"has only {t} encoder frames (the pruned loss needs T' >= tokens)"
            )

        sos_y = F.pad(y, (1, 0), value=self.blank_id)  # (N, S+1)
        dec = self.decoder(sos_y)  # (N, S+1, decoder_dim)
        boundary = torch.zeros(n, 4, dtype=torch.int64, device=enc.device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = enc_lens

        lm = self.simple_lm_proj(dec)  # (N, S+1, V)
        am = self.simple_am_proj(enc)  # (N, T, V)
        # the RNN-T losses run in float32 under mixed precision too (their internal
        # products and log-sum-exps would lose too much in bf16/fp16)
        with torch.autocast(enc.device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = rnnt_backend.rnnt_loss_smoothed(
                lm=lm.float(),
                am=am.float(),
                symbols=y,
                termination_symbol=self.blank_id,
                lm_only_scale=self.cfg.lm_scale,
                am_only_scale=self.cfg.am_scale,
                boundary=boundary,
                reduction="sum",
                return_grad=True,
            )
        ranges = rnnt_backend.get_rnnt_prune_ranges(
            px_grad=px_grad,
            py_grad=py_grad,
            boundary=boundary,
            s_range=self.cfg.prune_range,
        )  # (N, T, prune_range)
        am_pruned, lm_pruned = rnnt_backend.do_rnnt_pruning(
            am=self.joiner.encoder_proj(enc),
            lm=self.joiner.decoder_proj(dec),
            ranges=ranges,
        )  # (N, T, prune_range, joiner_dim) each
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)
        with torch.autocast(enc.device.type, enabled=False):
            pruned_loss = rnnt_backend.rnnt_loss_pruned(
                logits=logits.float(),
                symbols=y,
                ranges=ranges,
                termination_symbol=self.blank_id,
                boundary=boundary,
                reduction="sum",
            )
        simple_scale, pruned_scale = loss_scales(warmup, self.cfg.simple_loss_scale)
        loss = simple_scale * simple_loss + pruned_scale * pruned_loss

        if self.ctc_output is not None:
            log_probs = self.ctc_output(enc).float().log_softmax(-1)  # (N, T, V)
            ctc_loss = F.ctc_loss(
                log_probs.transpose(0, 1),
                y,
                enc_lens,
                y_lens,
                blank=self.blank_id,
                reduction="sum",
                zero_infinity=True,
            )
            loss = loss + self.cfg.ctc_weight * ctc_loss
        else:
            ctc_loss = enc.new_zeros(())

        return {
            "loss": loss,
            "simple_loss": simple_loss.detach(),
            "pruned_loss": pruned_loss.detach(),
            "ctc_loss": ctc_loss.detach(),
            "num_frames": int(enc_lens.sum()),
        }


def build_model(cfg: ModelConfig) -> Transducer:
    """cfg -> a freshly initialised Transducer."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(cfg).__name__}")
    return Transducer(cfg)
