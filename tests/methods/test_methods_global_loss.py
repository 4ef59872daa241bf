"""Two real gloo processes with DDP: the gradient is that of the token mean over both ranks' tokens."""

import datetime
import faulthandler
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from framework.methods.lm_module import global_token_mean


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 20))


def _batches():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :9] = -100  # rank 0 has 3 labelled tokens, rank 1 has 12: a mean of means would be wrong
    return ids, labels


def _loss_sum(model, ids, labels):
    logits = model(ids)
    loss_sum = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                 reduction="sum")
    return loss_sum, (labels != -100).sum()


def _worker(rank, out_dir):
    faulthandler.dump_traceback_later(120, exit=True)  # a stuck rendezvous fails the test instead of hanging it
    if os.path.isdir("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    store = dist.FileStore(os.path.join(out_dir, "store"), 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    model = torch.nn.parallel.DistributedDataParallel(_model())
    ids, labels = _batches()
    loss_sum, n = _loss_sum(model, ids[rank:rank + 1], labels[rank:rank + 1])
    loss, mean, tokens, inputs = global_token_mean(loss_sum, n, 2, ids[rank:rank + 1].numel())
    loss.backward()
    grads = {k: p.grad for k, p in model.module.named_parameters()}
    torch.save({"grads": grads, "mean": mean, "tokens": tokens, "inputs": inputs}, os.path.join(out_dir, f"{rank}.pt"))
    # no collective is left (backward's all-reduce finished on both ranks before either got here), and the
    # results are on disk: exit without tearing gloo down, whose teardown once hung both ranks for the
    # faulthandler's whole timeout on the CI machine
    os._exit(0)


def test_ddp_gradient_equals_the_global_token_mean_gradient(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)

    model = _model()
    ids, labels = _batches()
    loss_sum, n = _loss_sum(model, ids, labels)
    (loss_sum / n).backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert got["tokens"].item() == 15 and got["inputs"].item() == 24
        assert torch.allclose(got["mean"], (loss_sum / n).detach(), atol=1e-6)
        for name, p in model.named_parameters():
            assert torch.allclose(got["grads"][name], p.grad, atol=1e-6), name
