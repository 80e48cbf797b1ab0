"""`utils.hooks`: `Capture` records what it is asked to (the same tensors as hand-written hooks),
stops the forward pass after the last of them, and never leaves a hook behind."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from conftest import build_tiny_model
from fairstamp.models.archspec import arch_spec_for, get_module
from fairstamp.utils.hooks import Capture, StopForward, hidden_arg, replace_hidden_arg

IDS = torch.tensor([[1, 5, 9, 14, 20], [1, 7, 3, 11, 2]])


def count_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def by_hand(model, pre_paths, forward_paths):
    """Inputs and outputs of the modules, recorded by plain torch hooks over a full forward."""
    inputs, outputs = {}, {}

    def read_input(path):
        return lambda m, args, kwargs: inputs.__setitem__(path, hidden_arg(args, kwargs))

    def read_output(path):
        return lambda m, args, out: outputs.__setitem__(
            path, out[0] if isinstance(out, tuple) else out)

    with ExitStack() as registered, torch.no_grad():
        for path in pre_paths:
            module = get_module(model, path)
            registered.callback(module.register_forward_pre_hook(read_input(path),
                                                                 with_kwargs=True).remove)
        for path in forward_paths:
            registered.callback(get_module(model, path).register_forward_hook(
                read_output(path)).remove)
        logits = model(IDS).logits
    return inputs, outputs, logits


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_capture_records_the_inputs_and_outputs_hooks_see(arch):
    model = build_tiny_model(arch)
    spec = arch_spec_for(model)
    pre = [spec.layer_path(1), spec.mlp_out_proj_path(0), spec.unembed]
    forward = [spec.layer_path(2), spec.mlp_path(1), spec.attn_path(0)]
    expected_in, expected_out, expected_logits = by_hand(model, pre, forward)
    with torch.no_grad(), Capture(model, inputs=pre, outputs=forward) as seen:
        logits = model(IDS).logits
    assert torch.equal(logits, expected_logits)  # recording changes nothing
    assert set(seen.inputs) == set(pre) and set(seen.outputs) == set(forward)
    for path in pre:
        assert torch.equal(seen.inputs[path], expected_in[path])
    for path in forward:
        assert torch.equal(seen.outputs[path], expected_out[path])
    assert seen.inputs[spec.layer_path(1)].shape == (2, 5, 32)
    assert count_hooks(model) == 0


def test_capture_stops_after_the_last_requested_module_and_cleans_up():
    model = build_tiny_model("llama")
    spec = arch_spec_for(model)
    ran: list[str] = []
    watch = [get_module(model, spec.layer_path(i)).register_forward_hook(
        lambda m, a, o, i=i: ran.append(f"layer {i}")) for i in range(3)]
    watch.append(get_module(model, spec.unembed).register_forward_hook(
        lambda m, a, o: ran.append("unembed")))
    reached_end = False
    try:
        with Capture(model, inputs=[spec.layer_path(2)], outputs=[spec.layer_path(0)],
                     stop=True) as seen:
            model(IDS)
            reached_end = True  # not reached: the forward pass stopped at layer 2's input
    finally:
        for handle in watch:
            handle.remove()
    assert ran == ["layer 0", "layer 1"] and not reached_end
    assert set(seen.inputs) == {spec.layer_path(2)} and set(seen.outputs) == {spec.layer_path(0)}
    inputs, _, _ = by_hand(model, [spec.layer_path(2)], [spec.layer_path(0)])
    assert torch.equal(seen.inputs[spec.layer_path(2)], inputs[spec.layer_path(2)])
    assert count_hooks(model) == 0
    with torch.no_grad(), Capture(model, inputs=[spec.layer_path(2)]) as seen:
        model(IDS)  # without stop, the pass runs to the end
        reached_end = True
    assert reached_end and count_hooks(model) == 0


def test_capture_removes_its_hooks_when_the_forward_fails():
    model = build_tiny_model("llama")
    spec = arch_spec_for(model)

    def fail(module, args, output):
        raise RuntimeError("boom")

    handle = get_module(model, spec.layer_path(1)).register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"), \
                Capture(model, inputs=[spec.layer_path(2)], outputs=[spec.layer_path(0)],
                        stop=True):
            model(IDS)
    finally:
        handle.remove()
    assert count_hooks(model) == 0
    # StopForward raised by someone else's hook is not swallowed without stop=True
    with pytest.raises(StopForward), Capture(model, outputs=[spec.layer_path(0)]):
        raise StopForward
    assert count_hooks(model) == 0


def test_capture_detaches_and_clones_on_request():
    model = build_tiny_model("llama")
    model.requires_grad_(True)
    path = arch_spec_for(model).layer_path(1)
    with Capture(model, outputs=[path]) as shared, Capture(model, outputs=[path],
                                                           clone=True) as copied:
        model(IDS)
    assert not shared.outputs[path].requires_grad and not copied.outputs[path].requires_grad
    assert torch.equal(shared.outputs[path], copied.outputs[path])
    assert shared.outputs[path].data_ptr() != copied.outputs[path].data_ptr()
    assert count_hooks(model) == 0


def test_hidden_arg_reads_and_replaces_positional_and_keyword_inputs():
    x, y = torch.ones(2), torch.zeros(2)
    assert hidden_arg((x, 3), {}) is x
    assert hidden_arg((), {"hidden_states": x, "mask": 1}) is x
    assert hidden_arg((), {"input": x}) is x  # nn.Linear called by keyword
    assert replace_hidden_arg((x, 3), {"k": 1}, y) == ((y, 3), {"k": 1})
    assert replace_hidden_arg((), {"hidden_states": x}, y)[1]["hidden_states"] is y
    args, kwargs = replace_hidden_arg((), {"input": x}, y)
    assert args == () and kwargs == {"input": y}
