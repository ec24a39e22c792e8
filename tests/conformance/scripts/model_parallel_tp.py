"""ModelParallelStrategy: an attention + MLP block split by tensor parallelism, FSDP2 over data parallel.

The shape of Lightning's tensor-parallel tutorial: `configure_model` takes `self.device_mesh`,
splits q/k/v and the MLP's first layer by columns and the output projections by rows
(`parallelize_module`), and shards each block and the whole module with `fully_shard` on the
data-parallel sub-mesh. The strategy's sizes are left "auto": one process is a 1 x 1 mesh, 2 ranks
are tensor parallel 2 x data parallel 1 (both ranks read the same batches). A shuffled training
loader (Lightning puts in DistributedSampler(seed + epoch) under this strategy, even on one device),
AdamW, a validation loader, ModelCheckpoint(dirpath=...); a second Trainer resumes from the sharded
checkpoint (a directory) for a third epoch; the weights are gathered into a plain module for the report.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import report
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.utils.data import DataLoader, TensorDataset


class Block(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # no key bias: it adds the same q.b to every score of a query, which softmax ignores, so its
        # gradient is only rounding noise, and AdamW would turn that noise into lr-sized steps
        self.wq, self.wk, self.wv = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim)
        self.wo = nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def attention(self, x):
        b, t, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds its share of the heads
        q, k, v = (w(x).view(b, t, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class TinyTransformer(pl.LightningModule):
    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.inp = nn.Linear(4, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 1)

    def configure_model(self):
        tp, dp = self.device_mesh["tensor_parallel"], self.device_mesh["data_parallel"]
        plan = {"wq": ColwiseParallel(), "wk": ColwiseParallel(), "wv": ColwiseParallel(),
                "wo": RowwiseParallel(), "up": ColwiseParallel(), "down": RowwiseParallel()}
        for block in self.blocks:
            parallelize_module(block, tp, plan)
            fully_shard(block, mesh=dp)
        fully_shard(self, mesh=dp)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01)


def sequences(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 4, generator=g)
    return TensorDataset(x, x.cumsum(dim=1)[..., :1] * 0.5)


if __name__ == "__main__":
    pl.seed_everything(5)
    train, val = sequences(48, 0), sequences(16, 1)
    model = TinyTransformer()
    trainer = pl.Trainer(strategy=ModelParallelStrategy(), max_epochs=2, log_every_n_steps=2,
                         enable_progress_bar=False, callbacks=[ModelCheckpoint(dirpath="ckpts")])
    trainer.fit(model, DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=8))
    # a third epoch from the sharded checkpoint (a directory: each rank wrote its shards)
    resumed = TinyTransformer()
    trainer = pl.Trainer(strategy=ModelParallelStrategy(), max_epochs=3, log_every_n_steps=2,
                         enable_progress_bar=False, callbacks=[ModelCheckpoint(dirpath="ckpts")])
    trainer.fit(resumed, DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=8),
                ckpt_path="ckpts/epoch=1-step=12.ckpt")
    # the parameters are DTensors (shards): gather them into a plain module, as for an export
    full = get_model_state_dict(resumed, options=StateDictOptions(full_state_dict=True))
    plain = TinyTransformer()
    plain.load_state_dict(full)
    report(trainer, plain)
