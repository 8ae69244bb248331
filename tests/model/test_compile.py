"""train.compile: the encoder layers through torch.compile, against eager mode."""

import copy

import torch
from torch import nn

from q4asr.model import ModelConfig, build_model
from q4asr.model.conformer import ConvolutionModule, conv1d


def test_conv1d_forms_under_compile_match_the_convolutions():
    torch.manual_seed(0)
    mod = ConvolutionModule(16, 7)
    x = torch.randn(3, 21, 16)
    pad = torch.arange(21)[None, :] >= torch.tensor([21, 15, 9])[:, None]

    def run(fn):
        xi = x.clone().requires_grad_(True)
        out = fn(xi, pad)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in mod.parameters()] + [xi.grad]
        mod.zero_grad()
        return out.detach(), grads

    traced = []

    def backend(gm, example_inputs):
        traced.append(gm)
        return gm.forward

    ref, ref_grads = run(mod)
    out, grads = run(torch.compile(mod.forward, backend=backend, dynamic=True))
    ops = {str(n.target) for gm in traced for n in gm.graph.nodes}
    assert not any("conv" in op for op in ops), ops  # no convolution op was traced
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    assert conv1d(mod.depthwise, x.transpose(1, 2)).shape == (3, 16, 21)  # eager: conv


def test_compiled_layers_train_like_eager_and_compile_once():
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(half_rate_first=1, half_rate_layers=1, num_layers=3)
    eager = build_model(cfg)
    compiled = copy.deepcopy(eager)
    compiled.encoder.compile_layers()
    counts = torch._dynamo.utils.counters
    frames_before = counts["stats"]["unique_graphs"]
    g = torch.Generator().manual_seed(1)
    # two batches of other sizes: full- and half-rate layers, new N and T
    for n, t in ((3, 61), (4, 83)):
        lens = torch.randint(t // 2, t + 1, (n,), generator=g)
        lens[0] = t
        feats = torch.randn(n, t, cfg.num_mel_bins, generator=g)
        tokens = [
            torch.randint(1, cfg.vocab_size, (3,), generator=g).tolist()
            for _ in range(n)
        ]
        losses = []
        for model in (eager, compiled):
            model.zero_grad()
            out = model(feats, lens, tokens)
            out["loss"].backward()
            losses.append(out["loss"].detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
    # one graph for every layer and both batches: no recompilation per length
    assert counts["stats"]["unique_graphs"] - frames_before == 1
    # evaluation runs eager: the same outputs as the eager model's, bit for bit
    compiled.eval()
    eager.eval()
    with torch.no_grad():
        a = eager.encode(feats, lens)[0]
        b = compiled.encode(feats, lens)[0]
    assert torch.equal(a, b)
    assert isinstance(compiled.encoder.layers[0], nn.Module)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
