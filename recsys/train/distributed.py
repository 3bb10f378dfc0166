"""Process groups and TorchRec sharding: gloo on CPU, nccl on GPU, DistributedModelParallel.

Works under `torchrun` (RANK/WORLD_SIZE/MASTER_ADDR set) and as a single process (world size 1,
still a process group, so the code path is the same). Embedding tables get fused optimizers applied
in backward (`apply_optimizer_in_backward`) before sharding, as TorchRec expects; the sharding type
of every table is a constraint for the planner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterator, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim import RowWiseAdagrad

ShardingName = Literal["table_wise", "row_wise", "column_wise", "data_parallel"]
SHARDING_TYPES: Dict[str, str] = {
    "table_wise": ShardingType.TABLE_WISE.value,
    "row_wise": ShardingType.ROW_WISE.value,
    "column_wise": ShardingType.COLUMN_WISE.value,
    "data_parallel": ShardingType.DATA_PARALLEL.value,
}
EMBEDDING_OPTIMIZERS = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join (or create, for one process) the default process group."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(torch_device)
    return DistributedContext(rank, world_size, local_rank, torch_device, backend)


def embedding_modules(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if isinstance(module, (EmbeddingCollection, EmbeddingBagCollection)):
            yield module


def table_names(model: nn.Module) -> Dict[str, bool]:
    """Table name -> whether it belongs to a pooled (bag) collection."""
    names = {}
    for module in embedding_modules(model):
        configs = module.embedding_bag_configs() if isinstance(module, EmbeddingBagCollection) else module.embedding_configs()
        for config in configs:
            names[config.name] = isinstance(module, EmbeddingBagCollection)
    return names


def attach_fused_optimizer(model: nn.Module, name: str, lr: float, eps: float = 1e-8) -> None:
    """Embedding tables update inside backward with a fused (FBGEMM) optimizer."""
    optimizer = EMBEDDING_OPTIMIZERS[name]
    kwargs = {"lr": lr} if name == "sgd" else {"lr": lr, "eps": eps}
    for module in embedding_modules(model):
        apply_optimizer_in_backward(optimizer, module.parameters(), kwargs)


def shard_model(model: nn.Module, ctx: DistributedContext, sharding: Dict[str, ShardingName], sequence_default: ShardingName,
                batch_size: int, pooled_default: ShardingName = "table_wise") -> DistributedModelParallel:
    """Plan with per-table sharding constraints and wrap in DistributedModelParallel.

    `sharding` names a type per table; other tables take `sequence_default` (EmbeddingCollection
    tables) or `pooled_default` (EmbeddingBagCollection tables)."""
    constraints = {}
    for table, pooled in table_names(model).items():
        choice = sharding.get(table, pooled_default if pooled else sequence_default)
        if pooled and choice == "row_wise" and ctx.device.type == "cpu":
            # TorchRec's planner has no CPU kernel for row-wise pooled tables (it needs reduce-scatter).
            raise ValueError(f"table {table!r}: row_wise sharding of a pooled (profile/context) table is not available on CPU; use table_wise or column_wise")
        constraints[table] = ParameterConstraints(sharding_types=[SHARDING_TYPES[choice]])
    topology = Topology(world_size=ctx.world_size, compute_device=ctx.device.type)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints, debug=False)
    sharders = get_default_sharders()
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    return DistributedModelParallel(module=model, device=ctx.device, plan=plan, sharders=sharders)
