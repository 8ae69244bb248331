"""Conformer encoder (pre-norm, ESPnet/icefall style) built from quantizable modules.

Every weight-bearing matmul or convolution is a plain ``nn.Linear``, ``nn.Conv1d``
or ``nn.Conv2d`` called as a module, so a precision plan reaches all of them by
name, e.g. ``encoder.embed.conv1``, ``encoder.embed.out``,
``encoder.layers.3.self_attn.linear_q`` (``linear_k``, ``linear_v``, ``linear_out``,
``linear_pos``), ``encoder.layers.3.ff_macaron.linear1``,
``encoder.layers.3.conv.pointwise1``, ``encoder.layers.3.conv.depthwise``.

What stays float, and why:

- LayerNorm (statistics and affine): a reduction over activations with a
  division and square root; tiny in parameters, large in precision needs.
- Softmax, the attention scores ``q @ k^T`` and ``(q + v) @ p^T`` and the weighted
  sum ``attn @ v``: these multiply two activations, not an activation by a
  weight, so they hold no parameters to compress; they are a small share of the
  compute at our sequence lengths.
- Biases (including the relative-position biases ``pos_bias_u``/``pos_bias_v``):
  they are added after the integer accumulation, as in every integer kernel.
- Swish, GLU, ReLU, dropout and the residual additions: elementwise.

Padding: frames past ``lengths`` are masked out of attention keys and zeroed
before the depthwise convolution, so the output at a valid frame never depends
on padded frames (tested). The convolution module uses LayerNorm, not BatchNorm,
for the same reason (BatchNorm statistics would mix in padding and other
utterances).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from q4asr.model.config import ModelConfig


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after two 3x3 stride-2 convolutions without padding.

    lengths: (N,) int64 input frames -> (N,) int64 output frames
    (``((T - 1) // 2 - 1) // 2``, i.e. about T / 4).
    """
    return ((lengths - 1) // 2 - 1) // 2


def make_pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths: (N,) int64 -> (N, max_len) bool, True at padding positions."""
    assert lengths.ndim == 1, lengths.shape
    idx = torch.arange(max_len, device=lengths.device)
    return idx.unsqueeze(0) >= lengths.unsqueeze(1)


def halve_rate(
    x: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average pairs of frames: (N, T, D), (N,) int64 -> (N, ceil(T/2), D), (N,) int64.

    An output frame is the mean of the valid frames of its pair, so the last frame of
    an odd length is that frame alone and padding never enters a valid output frame.
    """
    n, t, d = x.shape
    t2 = int((t + 1) // 2)
    valid = (~make_pad_mask(lengths, t)).to(x.dtype).unsqueeze(-1)  # (N, T, 1)
    pad = (0, 0, 0, 1)  # one zero frame at the end: 2 * t2 frames to pair
    sums = nn.functional.pad(x * valid, pad)[:, : 2 * t2].reshape(n, t2, 2, d).sum(2)
    count = nn.functional.pad(valid, pad)[:, : 2 * t2].reshape(n, t2, 2, 1).sum(2)
    return sums / count.clamp(min=1.0), (lengths + 1) // 2


def double_rate(x: torch.Tensor, t: int) -> torch.Tensor:
    """Repeat every frame twice and keep the first t: (N, T2, D) -> (N, t, D)."""
    n, t2, d = x.shape
    return x.unsqueeze(2).expand(n, t2, 2, d).reshape(n, 2 * t2, d)[:, :t]


class Conv2dSubsampling(nn.Module):
    """x4 subsampling: two 3x3 stride-2 Conv2d + ReLU, then Linear to d_model.

    ``first_channels`` (default: ``channels``) is the width of the first convolution,
    the one that runs at twice the encoder's frame rate: icefall's Conv2dSubsampling
    keeps it narrow (8) and widens later.
    """

    def __init__(
        self,
        num_mel_bins: int,
        channels: int,
        d_model: int,
        first_channels: int | None = None,
    ) -> None:
        super().__init__()
        c1 = first_channels or channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(c1, channels, kernel_size=3, stride=2)
        f_out = ((num_mel_bins - 1) // 2 - 1) // 2
        self.act = nn.ReLU()
        self.out = nn.Linear(channels * f_out, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, F) float -> (N, T', d_model) float, T' = subsampled_lengths(T)."""
        assert x.ndim == 3, x.shape
        x = self.act(self.conv1(x.unsqueeze(1)))
        x = self.act(self.conv2(x))  # (N, C, T', F')
        n, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(n, t, c * f))


class RelPositionalEncoding(nn.Module):
    """Sinusoidal encodings of relative positions T-1 ... -(T-1) (Transformer-XL)."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, d_model) -> pos_emb: (1, 2T-1, d_model) float.

        Row ``j`` encodes the relative position ``T - 1 - j`` (query minus key).
        """
        assert x.ndim == 3 and x.shape[2] == self.d_model, x.shape
        t = x.shape[1]
        pos = torch.arange(t - 1, -t, -1, device=x.device, dtype=torch.float32)
        div = torch.exp(
            torch.arange(0, self.d_model, 2, device=x.device, dtype=torch.float32)
            * -(math.log(10000.0) / self.d_model)
        )
        pe = torch.zeros(2 * t - 1, self.d_model, device=x.device)
        pe[:, 0::2] = torch.sin(pos.unsqueeze(1) * div)
        pe[:, 1::2] = torch.cos(pos.unsqueeze(1) * div)
        return self.dropout(pe.to(x.dtype).unsqueeze(0))


def rel_shift_by_padding(x: torch.Tensor) -> torch.Tensor:
    """:func:`rel_shift` without ``as_strided`` (which neither ONNX nor
    ``torch.compile`` can trace): pad a zero column, reshape, drop a row. The same
    values (tested); slower in eager mode, where it copies the scores once more."""
    n, h, t, p = x.shape
    x = torch.cat([x.new_zeros(n, h, t, 1), x], dim=-1)  # (N, H, T, 2T)
    x = x.reshape(n, h, p + 1, t)[:, :, 1:].reshape(n, h, t, p)
    return x[..., :t]


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Select relative-position scores per (query, key) pair.

    x: (N, H, T, 2T-1) scores of each query against every relative position
    (column j is relative position T-1-j) -> (N, H, T, T) where
    ``out[..., i, k] = x[..., i, T - 1 - i + k]`` (relative position i - k).
    Under ``torch.compile``: :func:`rel_shift_by_padding`.
    """
    if torch.compiler.is_compiling():
        return rel_shift_by_padding(x)
    n, h, t, p = x.shape
    assert p == 2 * t - 1, x.shape
    x = x.contiguous()
    # Strided view: row i starts at column T-1-i; stepping a row moves back one.
    return x.as_strided(
        (n, h, t, t),
        (x.stride(0), x.stride(1), x.stride(2) - x.stride(3), x.stride(3)),
        storage_offset=x.storage_offset() + x.stride(3) * (t - 1),
    )


class RelPositionMultiHeadedAttention(nn.Module):
    """Multi-head self-attention with relative positions (Transformer-XL / ESPnet).

    score(i, k) = (q_i + u) . k_k + (q_i + v) . p_{i-k}, p = linear_pos(pos_emb).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        assert d_model % num_heads == 0, (d_model, num_heads)
        self.h = num_heads
        self.d_k = d_model // num_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.d_k))
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (N, T, d_model); pos_emb: (1, 2T-1, d_model);
        key_padding_mask: (N, T) bool, True at padding -> (N, T, d_model)."""
        n, t, d = x.shape
        assert pos_emb.shape == (1, 2 * t - 1, d), (pos_emb.shape, x.shape)
        q = self.linear_q(x).view(n, t, self.h, self.d_k)
        k = self.linear_k(x).view(n, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(n, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, 2 * t - 1, self.h, self.d_k)
        p = p.transpose(1, 2)  # (1, H, 2T-1, d_k)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (N, H, T, d_k)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        ac = torch.matmul(q_u, k.transpose(-2, -1))  # (N, H, T, T)
        bd = rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))  # (N, H, T, T)
        scores = (ac + bd) / math.sqrt(self.d_k)
        if key_padding_mask is not None:
            assert key_padding_mask.shape == (n, t), key_padding_mask.shape
            mask = key_padding_mask[:, None, None, :]
            scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
            attn = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
        else:
            attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(self.dropout(attn), v)  # (N, H, T, d_k)
        return self.linear_out(out.transpose(1, 2).reshape(n, t, d))


class FeedForward(nn.Module):
    """Linear -> Swish -> dropout -> Linear."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, d_model) -> (N, T, d_model)."""
        return self.linear2(self.dropout(self.act(self.linear1(x))))


class ConvolutionModule(nn.Module):
    """Pointwise Conv1d -> GLU -> depthwise Conv1d -> LayerNorm -> Swish -> pointwise."""

    def __init__(self, d_model: int, kernel_size: int) -> None:
        super().__init__()
        assert kernel_size % 2 == 1, kernel_size
        self.pointwise1 = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(
            d_model,
            d_model,
            kernel_size,
            padding=(kernel_size - 1) // 2,
            groups=d_model,
        )
        self.norm = nn.LayerNorm(d_model)
        self.act = nn.SiLU()
        self.pointwise2 = nn.Conv1d(d_model, d_model, kernel_size=1)

    def forward(
        self, x: torch.Tensor, pad_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (N, T, d_model); pad_mask: (N, T) bool, True at padding
        -> (N, T, d_model)."""
        assert x.ndim == 3, x.shape
        x = self.glu(conv1d(self.pointwise1, x.transpose(1, 2)))  # (N, d_model, T)
        if pad_mask is not None:
            assert pad_mask.shape == (x.shape[0], x.shape[2]), pad_mask.shape
            x = x.masked_fill(pad_mask.unsqueeze(1), 0.0)
        x = conv1d(self.depthwise, x)
        x = self.act(self.norm(x.transpose(1, 2))).transpose(1, 2)
        return conv1d(self.pointwise2, x).transpose(1, 2)


def conv1d(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, x: (N, C, T). Under ``torch.compile`` a float ``nn.Conv1d``
    (pointwise, or depthwise with "same" padding) is computed without a convolution
    op: a matmul, or a sum of shifted products. The compiled CPU backward of a
    convolution fixes the time length, so every new length would compile again; these
    forms keep it symbolic. The same function; the sums differ by float rounding."""
    if not (torch.compiler.is_compiling() and type(conv) is nn.Conv1d):
        return conv(x)
    (k,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
    assert stride == 1 and dilation == 1 and conv.padding_mode == "zeros", conv
    if k == 1 and conv.groups == 1:
        y = nn.functional.linear(x.transpose(1, 2), conv.weight[:, :, 0], conv.bias)
        return y.transpose(1, 2)
    assert conv.groups == conv.in_channels == conv.out_channels, conv
    assert conv.padding == ((k - 1) // 2,), conv
    t = x.shape[2]
    xp = nn.functional.pad(x, ((k - 1) // 2, (k - 1) // 2))
    w = conv.weight[:, 0, :]  # (C, K)
    y = sum(xp[:, :, i : i + t] * w[None, :, i, None] for i in range(k))
    return y if conv.bias is None else y + conv.bias[None, :, None]


class ConformerLayer(nn.Module):
    """Pre-norm Conformer block: half FFN, self-attention, conv module, half FFN.

    Unlike ESPnet's block there is no LayerNorm on the block output: the residual
    stream is normalised once, after the last block (``ConformerEncoder.norm_out``).
    With a norm on every block output the 6-layer demo model had not used the audio
    after 1,200 steps (its CTC loss stayed at the no-audio level); with one norm after
    the last block its dev CTC loss falls from about step 150 on.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff_macaron = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.self_attn = RelPositionMultiHeadedAttention(d, cfg.num_heads, cfg.dropout)
        self.conv = ConvolutionModule(d, cfg.conv_kernel)
        self.ff = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.norm_ff_macaron = nn.LayerNorm(d)
        self.norm_mha = nn.LayerNorm(d)
        self.norm_conv = nn.LayerNorm(d)
        self.norm_ff = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (N, T, d_model); pos_emb: (1, 2T-1, d_model); pad_mask: (N, T) bool
        -> (N, T, d_model)."""
        x = x + 0.5 * self.dropout(self.ff_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos_emb, pad_mask))
        x = x + self.dropout(self.conv(self.norm_conv(x), pad_mask))
        return x + 0.5 * self.dropout(self.ff(self.norm_ff(x)))


class ConformerEncoder(nn.Module):
    """Conv2d subsampling (x4) + relative positional encoding + Conformer layers.

    With ``half_rate_layers`` > 0 a run of middle layers sees half as many frames
    (:func:`halve_rate`); after it each frame is repeated twice and added to the
    run's input (:func:`double_rate`), as in Squeezeformer's temporal U-Net, so the
    output keeps the x4 frame rate. No parameters are added.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_mel_bins = cfg.num_mel_bins
        self.d_model = cfg.d_model
        self.embed = Conv2dSubsampling(
            cfg.num_mel_bins,
            cfg.subsampling_channels,
            cfg.d_model,
            first_channels=cfg.subsampling_first_channels or None,
        )
        self.pos_enc = RelPositionalEncoding(cfg.d_model, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.half_rate = range(
            cfg.half_rate_first, cfg.half_rate_first + cfg.half_rate_layers
        )
        self.compiled_layer = None

    def compile_layers(self) -> None:
        """Run the layers through ``torch.compile`` (Inductor) in training: one
        compiled ``ConformerLayer.forward`` for all of them, its batch and time sizes
        symbolic, so the full- and half-rate layers and every batch shape share one
        compilation (and its backward). Evaluation and inference stay eager. The
        front-end, the losses and the QAT modules are not compiled."""
        self.compiled_layer = torch.compile(ConformerLayer.forward, dynamic=True)

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats: (N, T, num_mel_bins) float; feat_lens: (N,) int64
        -> (N, T', d_model) float, (N,) int64 with T' = max(out_lens)."""
        assert feats.ndim == 3 and feats.shape[2] == self.num_mel_bins, feats.shape
        assert feat_lens.shape == (feats.shape[0],), feat_lens.shape
        x = self.embed(feats)
        out_lens = subsampled_lengths(feat_lens)
        t = int(out_lens.max())
        assert t <= x.shape[1], (t, x.shape)
        x = x[:, :t]
        pad_mask = make_pad_mask(out_lens, t)
        pos_emb = self.pos_enc(x)
        x = self.dropout(x)
        full = (pos_emb, pad_mask)
        compiled = (
            self.compiled_layer is not None
            and self.training
            and torch.is_grad_enabled()
        )
        for i, layer in enumerate(self.layers):
            if self.half_rate and i == self.half_rate.start:
                skip = x
                x, half_lens = halve_rate(x, out_lens)
                pos_emb = self.pos_enc(x)
                pad_mask = make_pad_mask(half_lens, x.shape[1])
            if compiled:
                if x._base is not None:  # a view (the front-end's output) compiles
                    x = x.clone()  # a graph of its own: give it a tensor of its own
                x = self.compiled_layer(layer, x, pos_emb, pad_mask)
            else:
                x = layer(x, pos_emb, pad_mask)
            if self.half_rate and i == self.half_rate.stop - 1:
                x = skip + double_rate(x, t)
                pos_emb, pad_mask = full
        return self.norm_out(x), out_lens
