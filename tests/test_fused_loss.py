"""Liger's fused head + cross-entropy kernel (``loss_kernel: liger``) against the chunked loss: value and gradients.

On the CPU the kernel runs under Triton's interpreter, which Triton reads when it is imported, so
`test_under_triton_interpreter` runs this file again in a subprocess with ``TRITON_INTERPRET=1`` set, where the
``interpreted`` tests run; on a CUDA machine the ``cuda`` test runs it compiled.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_lm_loss import adapted_llama

from mmft.models.lm_loss import IGNORE_INDEX, LossKernelError, check_loss_kernel, next_token_loss

pytest.importorskip("liger_kernel")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[1]
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in test_under_triton_interpreter's subprocess")
cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs a CUDA GPU")


@pytest.mark.skipif(INTERPRETED, reason="this is the interpreted run")
def test_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def fused_against_chunked(device: str) -> None:
    import liger_kernel.transformers as liger

    calls = []
    original = liger.LigerFusedLinearCrossEntropyLoss.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    liger.LigerFusedLinearCrossEntropyLoss.forward = counted
    try:
        torch.manual_seed(0)
        model = adapted_llama().to(device)
        reference = copy.deepcopy(model)
        ids = torch.randint(0, 64, (3, 12), device=device)
        labels = ids.clone()
        labels[:, :5] = IGNORE_INDEX
        labels[2, 9:] = IGNORE_INDEX
        loss = next_token_loss(model, {"input_ids": ids}, labels, kernel="liger")
        expected = next_token_loss(reference, {"input_ids": ids}, labels, kernel="chunked")
    finally:
        liger.LigerFusedLinearCrossEntropyLoss.forward = original
    assert calls == [1]  # the fused kernel ran, once
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    expected.backward()
    trained = [(n, p, q) for (n, p), q in zip(model.named_parameters(), reference.parameters()) if p.requires_grad]
    assert any("lm_head" in n for n, _, _ in trained)  # the head's gradient comes from the kernel too
    for name, p, q in trained:
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@interpreted
def test_fused_kernel_equals_the_chunked_loss_and_its_gradients():
    fused_against_chunked("cpu")


@cuda
def test_fused_kernel_equals_the_chunked_loss_on_cuda():
    fused_against_chunked("cuda")


def test_auto_takes_the_chunks_on_a_cpu_and_bad_kernels_are_named(monkeypatch):
    import liger_kernel.transformers as liger

    monkeypatch.setattr(liger.LigerFusedLinearCrossEntropyLoss, "forward", lambda *a, **k: pytest.fail("fused"))
    model = adapted_llama()
    ids = torch.randint(0, 64, (2, 8))
    assert next_token_loss(model, {"input_ids": ids}, ids, kernel="auto").isfinite()
    with pytest.raises(LossKernelError, match="loss_kernel must be auto, chunked or liger, not 'cce'"):
        check_loss_kernel("cce")
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)  # as if not installed
    with pytest.raises(LossKernelError, match=r"liger needs the liger-kernel package \(pip install mmft\[fused\]\)"):
        check_loss_kernel("liger")
    check_loss_kernel("auto")  # falls back to the chunks
