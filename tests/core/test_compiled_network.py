"""The compiled network: same numbers as eager, eager fallback on a failure."""

import logging

import torch
from torch import nn

from fme.core import compiled_network
from fme.core.compiled_network import CompiledNetwork
from fme.core.distributed import DistributedContext
from fme.core.parallelize import unwrap_network, wrap_data_parallel


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))


def _failing_backend(graph, example_inputs):
    raise RuntimeError("no C++ compiler found (forced in the test)")


def _gradients(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    out = module(x)
    (out**2).sum().backward()
    return out.detach(), [p.grad.clone() for p in module.parameters()]


def test_compiled_network_equals_eager_and_keeps_the_network_state():
    x = torch.randn(5, 6)
    eager_out, eager_grads = _gradients(_net(), x)
    net = _net()
    # aot_eager traces forward and backward like inductor, without a C++ build
    compiled = CompiledNetwork(net, backend="aot_eager")
    out, grads = _gradients(compiled, x)
    assert compiled.failure is None
    torch.testing.assert_close(out, eager_out, rtol=1e-6, atol=1e-6)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    assert list(compiled.state_dict()) == [f"module.{k}" for k in net.state_dict()]
    assert len(list(compiled.parameters())) == len(list(net.parameters()))


def test_a_compile_failure_runs_eagerly_with_the_reason_logged(caplog):
    x = torch.randn(5, 6)
    eager_out, eager_grads = _gradients(_net(), x)
    compiled = CompiledNetwork(_net(), backend=_failing_backend)
    with caplog.at_level(logging.WARNING):
        out, grads = _gradients(compiled, x)
        again = compiled(x)
    assert compiled.failure is not None
    assert "no C++ compiler found (forced in the test)" in compiled.failure
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "running it eagerly" in w]) == 1  # once
    assert "no C++ compiler found" in warnings[-1]
    assert torch.equal(out, eager_out) and torch.equal(again.detach(), eager_out)
    for g, e in zip(grads, eager_grads, strict=True):
        assert torch.equal(g, e)


def test_wrap_and_unwrap_with_compile(monkeypatch):
    monkeypatch.setattr(compiled_network, "_BACKEND", _failing_backend)
    net = _net()
    dist = DistributedContext.single_process()
    wrapped = wrap_data_parallel(net, dist, compile=True)
    assert isinstance(wrapped, CompiledNetwork)
    assert unwrap_network(wrapped) is net
    # a new phase re-wraps the plain network, not a compiled wrapper of it
    assert unwrap_network(wrap_data_parallel(wrapped, dist, compile=True)) is net
    assert wrap_data_parallel(wrapped, dist) is net
