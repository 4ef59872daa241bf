"""What each process of the Lightning strategy tests runs (imported by name in spawned processes)."""

from __future__ import annotations

import os

import torch
from pipeline_harness import sequence, tiny_comet

N_CHUNKS, CHUNK = 4, 16


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.items = [sequence(N_CHUNKS * CHUNK, seed=10 + i) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ids, labels = self.items[i]
        return {"input_ids": ids[0], "labels": labels[0]}


def _module(total_steps: int):
    from framework.job import OptimConfig
    from framework.methods.comet import CoMeTModule

    model = tiny_comet().train()
    return CoMeTModule(model, OptimConfig(lr=1e-3, warmup_steps=1, grad_clip=0.0), total_steps)


def _fit(rank, world, epochs, data, ckpt_path=None, root=None):
    import lightning.pytorch as pl

    from framework.strategies import LayerPipelineStrategy

    module = _module(4)
    trainer = pl.Trainer(accelerator="cpu", devices=world, strategy=LayerPipelineStrategy(), max_epochs=epochs,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root,
                         use_distributed_sampler=False)  # Lightning's sampler would shuffle; keep the order
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=False)
    return trainer, module


def _reference(data, steps: int):
    """The same training in one process, without Lightning: the plain model's token-mean loss."""
    module = _module(4)
    opt = module.configure_optimizers()
    optimizer, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    for i in range(steps):
        item = data[i % len(data)]
        optimizer.zero_grad()
        out = module.model(input_ids=item["input_ids"][None], labels=item["labels"][None])
        out.loss.backward()
        optimizer.step()
        sched.step()
    return module.model


def run(rank, world, tmp):
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world), NODE_RANK="0")
    data = Sequences(2)
    ref = _reference(data, 4)

    # uninterrupted: 2 epochs of 2 sequences
    trainer, whole = _fit(rank, world, 2, data, root=tmp)
    assert trainer.global_step == 4
    assert "forward" not in whole.model.__dict__  # the pipelined forward is removed at teardown
    for (n, p), q in zip(whole.model.named_parameters(), ref.parameters()):
        diff = (p.detach() - q.detach()).abs().max().item()
        assert diff < 1e-4, f"{n}: pipeline training differs from one process by {diff}"

    # 1 epoch, a checkpoint, then resume for the second (Lightning resumes a loader without state at an
    # epoch boundary exactly)
    path = os.path.join(tmp, "pipe.ckpt")
    first, _ = _fit(rank, world, 1, data, root=tmp)
    first.save_checkpoint(path)
    resumed_trainer, resumed = _fit(rank, world, 2, data, ckpt_path=path, root=tmp)
    assert resumed_trainer.global_step == 4
    for (n, p), q in zip(resumed.model.named_parameters(), whole.model.parameters()):
        diff = (p.detach() - q.detach()).abs().max().item()
        assert diff < 1e-6, f"{n}: resumed run differs from the uninterrupted one by {diff}"

    # ranks of a pipeline group train on the first rank's batch, whatever their own loader gave them
    import torch.distributed as dist

    from framework.strategies.batch import share_batch

    mine = {"input_ids": torch.full((1, 3 + rank), rank), "labels": [torch.tensor(rank)], "name": f"r{rank}"}
    got = share_batch(mine, src=0, group=dist.group.WORLD, device=torch.device("cpu"))
    assert got["input_ids"].tolist() == [[0, 0, 0]] and got["labels"][0].item() == 0 and got["name"] == "r0"
