import pytest
import torch

from aam.errors import BackendUnavailable
from aam.ops import registry


def _req(**kw):
    return registry.KernelRequest(torch.device("cpu"), torch.float32, **kw)


def test_auto_picks_highest_priority_that_can_run():
    registry.register("_t_op", "custom", lambda: "custom", lambda r: "not built", priority=10)
    registry.register("_t_op", "math", lambda: "math", lambda r: None, priority=0)
    assert registry.select("_t_op", "auto", _req()).name == "math"


def test_explicit_backend_that_cannot_run_raises_with_reason():
    registry.register("_t_op2", "custom", lambda: "custom", lambda r: "not built here", priority=10)
    registry.register("_t_op2", "math", lambda: "math", lambda r: None, priority=0)
    with pytest.raises(BackendUnavailable, match="not built here"):
        registry.select("_t_op2", "custom", _req())


def test_failed_self_check_is_skipped_by_auto_and_cached():
    calls = []

    def self_check(device):
        calls.append(device)
        return "wrong results"

    registry.register("_t_op3", "sdpa", lambda: 1, lambda r: None, priority=5, self_check=self_check)
    registry.register("_t_op3", "math", lambda: 0, lambda r: None, priority=0)
    assert registry.select("_t_op3", "auto", _req()).name == "math"
    assert registry.select("_t_op3", "auto", _req()).name == "math"
    assert len(calls) == 1


def test_unknown_choice_and_missing_backend():
    with pytest.raises(BackendUnavailable, match="unknown kernel backend"):
        registry.resolve_name("pairwise_unifrac_loss", "cuda")
    # an op without an sdpa backend maps a run-wide --kernels sdpa onto auto
    import aam.ops  # noqa: F401
    assert registry.resolve_name("pairwise_unifrac_loss", "sdpa") == "auto"
