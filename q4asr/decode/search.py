"""Transducer search: batched greedy and modified beam search (icefall's).

Both take the encoder output of ``Transducer.encode`` and return token ids
without blanks. The decoder context starts as ``[blank] * context_size``, as in
training. The caller chooses train/eval mode (normally ``model.eval()``); the
searches run without gradients.
"""

from __future__ import annotations

import torch

from q4asr.model.transducer import Transducer


def _check_inputs(model: Transducer, enc: torch.Tensor, enc_lens: torch.Tensor) -> None:
    if enc.ndim != 3 or enc.shape[2] != model.cfg.d_model:
        raise ValueError(
            f"enc must be (N, T, {model.cfg.d_model}), got {tuple(enc.shape)}"
        )
    if enc_lens.shape != (enc.shape[0],):
        raise ValueError(
            f"enc_lens must be ({enc.shape[0]},), got {tuple(enc_lens.shape)}"
        )
    if enc.shape[0] and int(enc_lens.max()) > enc.shape[1]:
        raise ValueError(
            f"enc_lens max {int(enc_lens.max())} exceeds enc length {enc.shape[1]}"
        )


@torch.no_grad()
def greedy_search(
    model: Transducer,
    enc: torch.Tensor,
    enc_lens: torch.Tensor,
    max_sym_per_frame: int = 1,
) -> list[list[int]]:
    """Batched greedy search.

    enc: (N, T, d_model) float; enc_lens: (N,) int64. At each frame the joiner's
    argmax is taken; a non-blank symbol extends the hypothesis and the same frame
    is tried again, up to ``max_sym_per_frame`` symbols per frame.
    Returns N lists of token ids.
    """
    _check_inputs(model, enc, enc_lens)
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    n, t_max, _ = enc.shape
    blank, ctx = model.blank_id, model.context_size
    device = enc.device
    enc_proj = model.joiner.encoder_proj(enc)  # (N, T, J)
    context = torch.full((n, ctx), blank, dtype=torch.int64, device=device)
    dec_proj = model.joiner.decoder_proj(model.decoder(context, need_pad=False))[:, 0]
    hyps: list[list[int]] = [[] for _ in range(n)]
    for t in range(t_max):
        active = enc_lens.to(device) > t  # (N,)
        for _ in range(max_sym_per_frame):
            logits = model.joiner(enc_proj[:, t], dec_proj, project_input=False)
            tokens = logits.argmax(-1)  # (N,)
            emit = active & (tokens != blank)
            if not bool(emit.any()):
                break
            for i in emit.nonzero().flatten().tolist():
                hyps[i].append(int(tokens[i]))
            context = torch.where(
                emit.unsqueeze(1),
                torch.cat([context[:, 1:], tokens.unsqueeze(1)], dim=1),
                context,
            )
            new_dec = model.joiner.decoder_proj(model.decoder(context, need_pad=False))[
                :, 0
            ]
            dec_proj = torch.where(emit.unsqueeze(1), new_dec, dec_proj)
            active = emit
    return hyps


@torch.no_grad()
def modified_beam_search(
    model: Transducer,
    enc: torch.Tensor,
    enc_lens: torch.Tensor,
    beam: int = 4,
) -> list[list[int]]:
    """Batched modified beam search (icefall's ``modified_beam_search``).

    enc: (N, T, d_model) float; enc_lens: (N,) int64. At most one symbol per
    frame; at each frame every hypothesis of every active utterance is extended
    by every token in one batched joiner call, the ``beam`` best (hypothesis,
    token) pairs of each utterance are kept, and pairs giving the same token
    sequence are merged by adding their probabilities (log-sum-exp). The result
    is each utterance's best hypothesis by log-probability per token (context
    included, as icefall's ``length_norm``). Returns N lists of token ids.
    """
    _check_inputs(model, enc, enc_lens)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    n, t_max, _ = enc.shape
    blank, ctx = model.blank_id, model.context_size
    device = enc.device
    enc_proj = model.joiner.encoder_proj(enc)  # (N, T, J)
    lens = enc_lens.tolist()
    init = tuple([blank] * ctx)
    # per utterance: token sequence (initial context included) -> log-prob
    beams: list[dict[tuple[int, ...], torch.Tensor]] = [
        {init: torch.zeros((), device=device)} for _ in range(n)
    ]
    for t in range(t_max):
        utts = [i for i in range(n) if lens[i] > t]
        if not utts:
            break
        keys = [(i, ys) for i in utts for ys in beams[i]]
        context = torch.tensor(
            [ys[-ctx:] for _, ys in keys], dtype=torch.int64, device=device
        )  # (H, context_size)
        dec_proj = model.joiner.decoder_proj(model.decoder(context, need_pad=False))
        rows = torch.tensor([i for i, _ in keys], device=device)
        logits = model.joiner(enc_proj[rows, t], dec_proj[:, 0], project_input=False)
        log_probs = logits.float().log_softmax(-1)  # (H, V)
        prev = torch.stack([beams[i][ys] for i, ys in keys])  # (H,)
        scores = log_probs + prev.unsqueeze(1)  # (H, V)
        vocab = scores.shape[1]
        start = 0
        for i in utts:
            count = len(beams[i])
            flat = scores[start : start + count].reshape(-1)
            top_val, top_idx = flat.topk(min(beam, flat.numel()))
            new: dict[tuple[int, ...], torch.Tensor] = {}
            for val, idx in zip(top_val, top_idx.tolist()):
                _, ys = keys[start + idx // vocab]
                token = idx % vocab
                new_ys = ys if token == blank else ys + (token,)
                if new_ys in new:
                    new[new_ys] = torch.logaddexp(new[new_ys], val)
                else:
                    new[new_ys] = val
            beams[i] = new
            start += count
    results = []
    for i in range(n):
        best = max(beams[i].items(), key=lambda kv: float(kv[1]) / len(kv[0]))[0]
        results.append(list(best[ctx:]))
    return results
