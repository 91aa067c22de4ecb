"""Output layer and cross-entropy in one pass over row chunks, never holding all the logits.

The plain way, logits = x @ W.T then F.cross_entropy(logits), materialises a (tokens, vocab)
matrix several times (logits, log-softmax, their gradients): for 16 x 256 tokens and an
8192-word vocabulary that is 134 MB per copy, and on a CPU reading and writing it costs as
much time as the output layer's matrix products. Here, for each chunk of rows, we compute
the logits, the loss, and right away the gradient (softmax - one-hot), which we multiply
into the gradients of x and W; the chunk is then freed. Same result, one pass, little memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this id add nothing to the loss (padding, prompt tokens in fine-tuning)


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 0
) -> torch.Tensor:
    """Mean cross-entropy of logits x @ weight.T against targets, ignoring IGNORE_INDEX.

    x: (N, d) final hidden states, weight: (vocab, d), targets: (N,). chunk_rows <= 0 picks
    chunks of about 16 MB of fp32 logits.
    """
    if torch.compiler.is_compiling():  # the compiler fuses the plain version itself
        return F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=IGNORE_INDEX)
    if chunk_rows <= 0:
        chunk_rows = max(1, (4 << 20) // weight.shape[0])
    need_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(x, weight, targets, chunk_rows, need_grad)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows: int, need_grad: bool):
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else weight.dtype  # the matrix products' dtype
        w = weight.to(dtype)
        valid = targets != IGNORE_INDEX
        # each valid row's share of the mean; 0 for ignored rows (an all-ignored batch, possible in
        # fine-tuning when every target is prompt text, has loss 0 and no gradient, not 0/0)
        row_weight = valid / valid.sum().clamp(min=1)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if need_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        # Two (chunk, vocab) fp32 buffers reused by every chunk: no fresh large allocation per chunk.
        rows_max = min(chunk_rows, x.shape[0])
        logits_buf = torch.empty(rows_max, weight.shape[0], dtype=torch.float32, device=x.device)
        logp_buf = torch.empty_like(logits_buf)
        with torch.autocast(device, enabled=False):
            for start in range(0, x.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                xc, share = x[rows].to(dtype), row_weight[rows, None]
                tc = targets[rows].clamp(min=0)[:, None]  # ignored rows: any index, their share is 0
                logits, logp = logits_buf[: xc.shape[0]], logp_buf[: xc.shape[0]]
                if dtype == torch.float32:
                    torch.mm(xc, w.t(), out=logits)
                else:
                    logits.copy_(xc @ w.t())
                torch.log_softmax(logits, dim=-1, out=logp)
                total -= (logp.gather(1, tc) * share).sum()
                if need_grad:
                    assert grad_x is not None and grad_w is not None  # made above when need_grad
                    # d(loss)/d(logits) = share * (softmax - one_hot(target)). The per-row share is
                    # applied to the small (rows, d) operands, not to the (rows, vocab) matrix.
                    grad = logp.exp_().scatter_add_(1, tc, torch.full_like(share, -1.0))
                    if dtype == torch.float32:
                        torch.mul(grad @ w, share, out=grad_x[rows])
                        grad_w.addmm_(grad.t(), xc * share)  # accumulates in place
                    else:
                        grad = grad.to(dtype)
                        grad_x[rows] = (grad @ w) * share
                        grad_w += (grad.t() @ (xc * share.to(dtype))).float()
        if need_grad:
            assert grad_x is not None and grad_w is not None  # made above when need_grad
            ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None
