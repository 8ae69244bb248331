"""Model config, module shapes, relative-position attention, padding, losses."""

import pytest
import torch
from torch import nn

from q4asr.model import ModelConfig, build_model
from q4asr.model.conformer import (
    ConformerLayer,
    Conv2dSubsampling,
    ConvolutionModule,
    FeedForward,
    RelPositionalEncoding,
    RelPositionMultiHeadedAttention,
    double_rate,
    halve_rate,
    rel_shift,
    subsampled_lengths,
)
from q4asr.model.transducer import Decoder, Joiner, loss_scales


def test_config_round_trip_and_errors():
    cfg = ModelConfig.tiny(ctc_weight=0.5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="conv_kernel"):
        ModelConfig(conv_kernel=4)
    with pytest.raises(ValueError, match="model: unknown key 'dmodel'"):
        ModelConfig.from_dict({"dmodel": 3})
    with pytest.raises(ValueError, match="model.dropout: must be in"):
        ModelConfig(dropout=1.5)


def test_param_counts_in_range():
    n_default = sum(p.numel() for p in build_model(ModelConfig()).parameters())
    n_tiny = sum(p.numel() for p in build_model(ModelConfig.tiny()).parameters())
    assert 2e6 <= n_default <= 6e6, n_default
    assert n_tiny < 1e5, n_tiny


def test_module_shapes():
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    x = torch.randn(2, 50, cfg.num_mel_bins)
    sub = Conv2dSubsampling(cfg.num_mel_bins, 8, cfg.d_model)
    h = sub(x)
    assert h.shape == (2, int(subsampled_lengths(torch.tensor(50))), cfg.d_model)
    t = h.shape[1]
    pos = RelPositionalEncoding(cfg.d_model, 0.0)(h)
    assert pos.shape == (1, 2 * t - 1, cfg.d_model)
    attn = RelPositionMultiHeadedAttention(cfg.d_model, cfg.num_heads, 0.0)
    assert attn(h, pos).shape == h.shape
    assert FeedForward(cfg.d_model, 64, 0.0)(h).shape == h.shape
    assert ConvolutionModule(cfg.d_model, 7)(h).shape == h.shape
    assert ConformerLayer(cfg)(h, pos).shape == h.shape
    dec = Decoder(cfg.vocab_size, cfg.decoder_dim, cfg.context_size)
    y = torch.randint(0, cfg.vocab_size, (2, 5))
    assert dec(y).shape == (2, 5, cfg.decoder_dim)
    assert dec(y[:, :2], need_pad=False).shape == (2, 1, cfg.decoder_dim)
    j = Joiner(cfg.d_model, cfg.decoder_dim, cfg.joiner_dim, cfg.vocab_size)
    out = j(h.unsqueeze(2), dec(y).unsqueeze(1))
    assert out.shape == (2, t, 5, cfg.vocab_size)
    model = build_model(cfg)
    enc, enc_lens = model.encode(x, torch.tensor([50, 31]))
    assert enc.shape == (2, t, cfg.d_model)
    assert enc_lens.tolist() == subsampled_lengths(torch.tensor([50, 31])).tolist()


def test_rel_shift_matches_explicit_indexing():
    x = torch.randn(2, 3, 5, 9)
    out = rel_shift(x)
    for i in range(5):
        for k in range(5):
            torch.testing.assert_close(out[:, :, i, k], x[:, :, i, 5 - 1 - i + k])


def test_attention_depends_on_relative_position_only():
    """Shifting a sequence inside a longer zero-padded one shifts the output."""
    torch.manual_seed(0)
    d, h = 16, 2
    attn = RelPositionMultiHeadedAttention(d, h, 0.0).eval()
    pe = RelPositionalEncoding(d, 0.0)
    x = torch.randn(1, 6, d)
    y = attn(x, pe(x))
    big = torch.zeros(1, 9, d)
    big[:, 3:] = x
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[:, :3] = True
    y_big = attn(big, pe(big), mask)
    torch.testing.assert_close(y_big[:, 3:], y, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_unpadded_outputs():
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    attn = RelPositionMultiHeadedAttention(cfg.d_model, cfg.num_heads, 0.0)
    pe = RelPositionalEncoding(cfg.d_model, 0.0)
    x = torch.randn(1, 7, cfg.d_model)
    ref = attn(x, pe(x))
    padded = torch.cat([x, 100 * torch.randn(1, 5, cfg.d_model)], dim=1)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[:, 7:] = True
    got = attn(padded, pe(padded), mask)
    torch.testing.assert_close(got[:, :7], ref, atol=1e-5, rtol=1e-5)
    # the whole encoder, in a batch with a longer utterance and garbage padding
    model = build_model(cfg).train()  # tiny: dropout 0, LayerNorm only
    feats = torch.randn(1, 60, cfg.num_mel_bins)
    enc, lens = model.encode(feats, torch.tensor([60]))
    batch = 50 * torch.randn(2, 90, cfg.num_mel_bins)
    batch[0, :60] = feats[0]
    enc_b, lens_b = model.encode(batch, torch.tensor([60, 90]))
    assert lens_b[0] == lens[0]
    torch.testing.assert_close(enc_b[0, : lens[0]], enc[0], atol=1e-4, rtol=1e-4)


def test_every_weight_lives_in_a_quantizable_module():
    model = build_model(ModelConfig.tiny())
    quantizable = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
    owners = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}"] = mod
    for name, p in model.named_parameters():
        if p.ndim >= 2 and not name.endswith(("pos_bias_u", "pos_bias_v")):
            assert isinstance(owners[name], quantizable), name
    names = dict(model.named_modules())
    for expected in (
        "encoder.layers.1.self_attn.linear_q",
        "encoder.layers.1.self_attn.linear_pos",
        "encoder.layers.1.conv.depthwise",
        "encoder.layers.0.ff_macaron.linear1",
        "encoder.embed.conv1",
        "decoder.embedding",
        "decoder.conv",
        "joiner.output",
        "ctc_output",
    ):
        assert expected in names, expected


def test_loss_scales_schedule():
    assert loss_scales(0.0, 0.5) == (1.0, 0.0)
    assert loss_scales(1.0, 0.5) == (0.5, 1.0)
    assert loss_scales(3.0, 0.5) == (0.5, 1.0)
    s, p = loss_scales(0.5, 0.5)
    assert s == pytest.approx(0.75) and p == pytest.approx(0.5)


def _batch(cfg):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 80, cfg.num_mel_bins, generator=g)
    lens = torch.tensor([80, 64, 41])
    targets = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
    return feats, lens, targets


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_forward_losses_and_ctc_switch(ctc_weight):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(ctc_weight=ctc_weight)
    model = build_model(cfg)
    assert (model.ctc_output is None) == (ctc_weight == 0.0)
    feats, lens, targets = _batch(cfg)
    out = model(feats, lens, targets, warmup=1.0)
    assert out["num_frames"] == int(subsampled_lengths(lens).sum())
    expected = 0.5 * out["simple_loss"] + out["pruned_loss"]
    expected = expected + ctc_weight * out["ctc_loss"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    if ctc_weight == 0.0:
        assert float(out["ctc_loss"]) == 0.0
    else:
        assert float(out["ctc_loss"]) > 0.0
    out0 = model(feats, lens, targets, warmup=0.0)
    torch.testing.assert_close(
        out0["loss"].detach(), out0["simple_loss"] + ctc_weight * out0["ctc_loss"]
    )
    out["loss"].backward()
    assert model.joiner.output.weight.grad.abs().sum() > 0
    assert model.encoder.embed.conv1.weight.grad.abs().sum() > 0


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    model = build_model(cfg)
    feats, lens, targets = _batch(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        out = model(feats, lens, targets, warmup=step / 10)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["pruned_loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_bad_inputs_are_named():
    cfg = ModelConfig.tiny()
    model = build_model(cfg)
    feats, lens, targets = _batch(cfg)
    with pytest.raises(ValueError, match="utterance 1: empty"):
        model(feats, lens, [[1], [], [2]])
    with pytest.raises(ValueError, match="utterance 2: token id"):
        model(feats, lens, [[1], [2], [0, 3]])
    with pytest.raises(ValueError, match="utterance 0: 5 frames"):
        model.encode(feats, torch.tensor([5, 64, 41]))
    with pytest.raises(ValueError, match="feats must be"):
        model.encode(feats[..., :-1], lens)
    with pytest.raises(ValueError, match="encoder frames"):
        model(feats[:1, :20], torch.tensor([20]), [list(range(1, 10))])


def test_light_front_end():
    """A narrow first convolution keeps the lengths, the padding independence and the
    quantizable modules of the default front-end, with far fewer multiplies."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(subsampling_first_channels=4, subsampling_channels=8)
    model = build_model(cfg).train()
    assert model.encoder.embed.conv1.out_channels == 4
    assert model.encoder.embed.conv2.in_channels == 4
    assert model.encoder.embed.conv2.out_channels == 8
    for t in range(7, 40):
        h = model.encoder.embed(torch.randn(1, t, cfg.num_mel_bins))
        assert h.shape[1] == int(subsampled_lengths(torch.tensor([t]))[0]) >= 1
    feats = torch.randn(1, 60, cfg.num_mel_bins)
    enc, lens = model.encode(feats, torch.tensor([60]))
    batch = 50 * torch.randn(2, 90, cfg.num_mel_bins)
    batch[0, :60] = feats[0]
    enc_b, lens_b = model.encode(batch, torch.tensor([60, 90]))
    assert lens_b[0] == lens[0] == 14
    torch.testing.assert_close(enc_b[0, : lens[0]], enc[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="subsampling_first_channels"):
        ModelConfig.tiny(subsampling_first_channels=-1)


def test_halve_and_double_rate():
    x = torch.arange(1.0, 8.0).view(1, 7, 1).repeat(2, 1, 3)  # frames 1 ... 7
    x[1, 5:] = 1000.0  # padding of the second utterance (5 frames)
    half, lens = halve_rate(x, torch.tensor([7, 5]))
    assert lens.tolist() == [4, 3] and half.shape == (2, 4, 3)
    assert half[0, :, 0].tolist() == [1.5, 3.5, 5.5, 7.0]  # the odd last frame alone
    assert half[1, :3, 0].tolist() == [1.5, 3.5, 5.0]  # padding never averaged in
    up = double_rate(half, 7)
    assert up.shape == (2, 7, 3)
    assert up[0, :, 0].tolist() == [1.5, 1.5, 3.5, 3.5, 5.5, 5.5, 7.0]


@pytest.mark.parametrize("first,count", [(1, 1), (0, 2), (1, 2)])
def test_half_rate_layers_keep_lengths_and_padding_independence(first, count):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(num_layers=3, half_rate_first=first, half_rate_layers=count)
    model = build_model(cfg).train()
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in build_model(ModelConfig.tiny(num_layers=3)).parameters()
    )
    for n in (58, 62):  # an odd and an even number of encoder frames
        feats = torch.randn(1, n, cfg.num_mel_bins)
        enc, lens = model.encode(feats, torch.tensor([n]))
        assert enc.shape[1] == lens[0] == int(subsampled_lengths(torch.tensor([n]))[0])
        batch = 50 * torch.randn(2, 90, cfg.num_mel_bins)
        batch[0, :n] = feats[0]
        enc_b, lens_b = model.encode(batch, torch.tensor([n, 90]))
        assert lens_b[0] == lens[0]
        torch.testing.assert_close(enc_b[0, : lens[0]], enc[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="half_rate_layers"):
        ModelConfig.tiny(num_layers=3, half_rate_first=2, half_rate_layers=2)
    with pytest.raises(ValueError, match="half_rate_first"):
        ModelConfig.tiny(half_rate_first=-1, half_rate_layers=1)


def test_half_rate_integer_model_equals_its_qat_model():
    from q4asr.quant import Precision, PrecisionPlan, convert, prepare, set_quant_mode

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(num_layers=3, half_rate_first=1, half_rate_layers=2)
    qat = build_model(cfg)
    prepare(qat, PrecisionPlan(default=Precision(weight_bits=4, act_bits=8)))
    set_quant_mode(qat, True)
    qat.eval()
    feats, lens = torch.randn(2, 71, cfg.num_mel_bins), torch.tensor([71, 58])
    with torch.no_grad():
        want, want_lens = qat.encode(feats, lens)
        got, got_lens = convert(qat).encode(feats, lens)
    assert torch.equal(got_lens, want_lens) and torch.equal(got, want)
