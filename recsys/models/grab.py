"""GRAB (Chen et al., 2026; ../shared/specs/GRAB.md): sequence-first ranking with CamA.

Each event is one token from its content embeddings, `Linear(LayerNorm(concat(fields)))`, never its
own outcome; the action embedding `a_j` enters keys and values of action channels only. Candidates
follow the history; the profile/context fields form one context token per user. Blocks are pre-norm
CamA + SwiGLU. The head `MLP(LN(h_i))`, clamped to ±15, scores every history event (dense
supervision) and every candidate.

Two layouts give the same outputs: padded (`[B, L + M]`, one context token per row) and packed
(all users of the batch concatenated without padding, one context token per user, masks keeping
users apart). Options in `GRABConfig`: `channels` ((name, heads, action group) triples; default:
half the heads on content, the rest split over the spec's action groups), `attention` softmax |
pointwise | reference | flex (FlexAttention: the channel mask as a mask_mod, the temporal bias as a
score_mod) | triton (`recsys.ops.cama_triton`: one fused kernel, masks and bias computed per tile);
flex and triton build no dense `[B, H, N, N]` tensor and are GPU training paths, export serves
their softmax twin (same parameters), `position_bias`, `num_buckets`. The dense-supervision weight of history
events (`history_loss_weight`) belongs to the loss, `recsys.train.loop.LossConfig`.
"""


from dataclasses import dataclass, field
from typing import List, Literal, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from recsys.models.base import ModelOutput, RankingModel, SequenceInputs, all_times, history_valid
from recsys.models.embedding import EmbeddedBatch, EmbeddingLayout
from recsys.models.layers import MLP, SwiGLU
from recsys.ops.cama import cama_attention, cama_attention_reference, cama_mask, cama_pointwise_attention
from recsys.ops.cama_flex import cama_block_mask, cama_flex_attention, head_channels
from recsys.ops.cama_triton import CamaMeta, cama_meta, cama_triton_attention, channel_bits
from recsys.ops.temporal import log_bucket

CONTENT_CHANNEL = "all"
LOGIT_CLAMP = 15.0


@dataclass(frozen=True)
class GRABConfig:
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    channels: Optional[Tuple[Tuple[str, int], ...]] = None  # (group name or "all", heads)
    attention: Literal["softmax", "pointwise", "reference", "flex", "triton"] = "softmax"
    num_buckets: int = 128
    position_bias: bool = False
    max_position: int = 1024
    head_hidden: Tuple[int, ...] = field(default=(128,))
    dropout: float = 0.0


def default_channels(heads: int, groups: List[str]) -> Tuple[Tuple[str, int], ...]:
    """Half the heads (at least one) on content, the rest spread over the action groups."""
    if not groups:
        return ((CONTENT_CHANNEL, heads),)
    content = max(1, heads // 2)
    rest = heads - content
    usable = groups[: max(rest, 0)] if rest else []
    if not usable:
        return ((CONTENT_CHANNEL, heads),)
    per_group = [rest // len(usable) + (1 if i < rest % len(usable) else 0) for i in range(len(usable))]
    return ((CONTENT_CHANNEL, content),) + tuple((g, n) for g, n in zip(usable, per_group))


class FlatSequence(NamedTuple):
    """The layout CamA runs on: B rows of N positions, S context tokens per row."""

    tokens: Tensor  # [B, N, d]
    actions: Tensor  # [B, N, action_dim]
    action_ids: Tensor  # [B, N]
    times: Tensor  # [B, N]
    position: Tensor  # [B, N]
    segment: Tensor  # [B, N]
    real: Tensor  # [B, N]
    is_candidate: Tensor  # [B, N]
    context: Tensor  # [B, S, d]


class CamA(nn.Module):
    def __init__(self, cfg: GRABConfig, action_dim: int, head_groups: List[Tensor], action_heads: Tensor, num_actions: int):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.d_model // cfg.heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.action_kv = nn.Linear(action_dim, 2 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.time_bias = nn.Embedding(cfg.num_buckets + 1, cfg.heads)
        nn.init.zeros_(self.time_bias.weight)
        self.position_bias = nn.Embedding(cfg.max_position + 1, cfg.heads) if cfg.position_bias else None
        self.max_position = cfg.max_position
        self.num_buckets = cfg.num_buckets
        self.attention = cfg.attention
        self.head_groups = head_groups
        self.register_buffer("action_heads", action_heads.view(1, cfg.heads, 1, 1).float(), persistent=False)
        if cfg.attention in ("flex", "triton") and cfg.position_bias:
            raise ValueError(f"attention='{cfg.attention}' carries the temporal bias only; use position_bias=false or another attention")
        self.action_groups, head_group = channel_bits(head_groups)
        self.register_buffer("head_group", head_group, persistent=False)
        content_head, in_group = head_channels(head_groups, num_actions, torch.device("cpu"))
        self.register_buffer("content_head", content_head, persistent=False)
        self.register_buffer("in_group", in_group, persistent=False)

    def _split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _apply(self, fn, recurse=True):
        # head_groups is a plain list (TorchScript needs List[Tensor]): move it with the module.
        super()._apply(fn, recurse)
        self.head_groups = [fn(group) for group in self.head_groups]
        self.action_groups = [fn(group) for group in self.action_groups]
        return self

    def meta(self, seq: FlatSequence) -> CamaMeta:
        """The fused kernel's per-batch metadata (the same for every layer: build it once)."""
        return cama_meta(seq.segment, seq.position, seq.times, seq.real, seq.is_candidate, seq.action_ids, self.action_groups,
                         self.head_group, self.num_buckets)

    def forward(self, x: Tensor, context: Tensor, seq: FlatSequence, meta: Optional[CamaMeta] = None) -> Tensor:
        batch, length, width = x.shape
        q = self._split(self.q(x))
        k, v = self.kv(x).chunk(2, dim=-1)
        k, v = self._split(k), self._split(v)
        action_k, action_v = self.action_kv(seq.actions).chunk(2, dim=-1)
        action_k, action_v = self._split(action_k), self._split(action_v)
        # Only action-channel heads see the action: K_c = X W_k^c + a_j U_k^c.
        k = k + action_k * self.action_heads
        v = v + action_v * self.action_heads
        context_k, context_v = self.kv(context).chunk(2, dim=-1)
        context_k, context_v = self._split(context_k), self._split(context_v)
        if self.attention == "triton":
            if torch.jit.is_scripting():
                raise RuntimeError("attention='triton' is a GPU training path; export the softmax twin (same parameters)")
            else:
                out = cama_triton_attention(q, k, v, context_k, context_v, meta if meta is not None else self.meta(seq),
                                            self.time_bias.weight, self.num_buckets,
                                            packed=context.shape[1] > 1)  # one context token per segment
                return self.out(out.transpose(1, 2).reshape(batch, length, width))
        keys, values = torch.cat([context_k, k], dim=2), torch.cat([context_v, v], dim=2)
        if self.attention == "flex":
            if torch.jit.is_scripting():
                raise RuntimeError("attention='flex' is a GPU training path; export the softmax twin (same parameters)")
            else:
                block_mask = cama_block_mask(seq.segment, seq.position, seq.times, seq.real, seq.is_candidate, seq.action_ids,
                                             self.content_head, self.in_group, context.shape[1])
                out = cama_flex_attention(q, keys, values, block_mask, seq.times, self.time_bias.weight, context.shape[1], self.num_buckets)
                return self.out(out.transpose(1, 2).reshape(batch, length, width))
        mask = cama_mask(seq.segment, seq.position, seq.times, seq.real, seq.is_candidate, seq.action_ids, self.head_groups, context.shape[1])
        delta = (seq.times.unsqueeze(2) - seq.times.unsqueeze(1)).clamp_min(0)
        bias = self.time_bias(log_bucket(delta, self.num_buckets)).permute(0, 3, 1, 2)  # [B, H, N, N]
        if self.position_bias is not None:
            gap = (seq.position.unsqueeze(2) - seq.position.unsqueeze(1)).clamp(0, self.max_position)
            bias = bias + self.position_bias(gap).permute(0, 3, 1, 2)
        bias = torch.cat([bias.new_zeros(batch, self.heads, length, context.shape[1]), bias], dim=3)
        if self.attention == "reference":
            out = cama_attention_reference(q, keys, values, mask, bias)
        elif self.attention == "pointwise":
            out = cama_pointwise_attention(q, keys, values, mask, bias, self.max_position)
        else:
            out = cama_attention(q, keys, values, mask, bias)
        return self.out(out.transpose(1, 2).reshape(batch, length, width))


class GRABBlock(nn.Module):
    def __init__(self, cfg: GRABConfig, action_dim: int, head_groups: List[Tensor], action_heads: Tensor, num_actions: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.d_model)
        self.attention = CamA(cfg, action_dim, head_groups, action_heads, num_actions)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = SwiGLU(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, context: Tensor, seq: FlatSequence, meta: Optional[CamaMeta] = None) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), self.attention_norm(context), seq, meta))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class GRAB(RankingModel):
    def __init__(self, layout: EmbeddingLayout, cfg: GRABConfig, packed: bool = False):
        super().__init__(layout)
        self.cfg = cfg
        self.packed = packed
        if cfg.d_model % cfg.heads:
            raise ValueError(f"d_model {cfg.d_model} is not a multiple of heads {cfg.heads}")
        channels = cfg.channels or default_channels(cfg.heads, sorted(layout.action_group_rows))
        if sum(n for _, n in channels) != cfg.heads:
            raise ValueError(f"channels {channels} do not add up to {cfg.heads} heads")
        unknown = [name for name, _ in channels if name != CONTENT_CHANNEL and name not in layout.action_group_rows]
        if unknown:
            raise ValueError(f"channels {unknown} are not action groups of the feature spec ({sorted(layout.action_group_rows)})")
        self.channels = channels
        head_groups: List[Tensor] = []
        for name, count in channels:
            rows = torch.tensor(layout.action_group_rows.get(name, ()), dtype=torch.int64) if name != CONTENT_CHANNEL else torch.zeros(0, dtype=torch.int64)
            head_groups += [rows] * count
        action_heads = torch.tensor([group.numel() > 0 for group in head_groups])
        self.token_norm = nn.LayerNorm(layout.content_dim)
        self.token = nn.Linear(layout.content_dim, cfg.d_model)
        self.context = nn.Linear(layout.side_dim, cfg.d_model) if layout.side_dim else None
        self.context_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model).normal_(0, 0.02))
        num_actions = layout.num_embeddings[next(f.table for f in layout.sequence_fields if f.column == layout.action_column)]
        self.blocks = nn.ModuleList([GRABBlock(cfg, layout.action_dim, head_groups, action_heads, num_actions) for _ in range(cfg.layers)])
        self.head_norm = nn.LayerNorm(cfg.d_model)
        self.head = MLP(cfg.d_model, cfg.head_hidden, 1, cfg.dropout)
        self.logit_clamp = LOGIT_CLAMP
        self.fused_attention = cfg.attention == "triton"

    def score(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> ModelOutput:
        batch, length = inputs.history_times.shape
        candidates = embedded.candidate_content.shape[1]
        content = torch.cat([embedded.history_content, embedded.candidate_content], dim=1)
        tokens = self.token(self.token_norm(content))
        context = self.context_token.expand(batch, 1, -1)
        if self.context is not None:
            context = context + self.context(embedded.side).unsqueeze(1)
        actions = torch.cat([embedded.history_action, embedded.candidate_action.expand(batch, candidates, -1)], dim=1)
        action_ids = torch.cat([embedded.history_action_ids, embedded.history_action_ids.new_zeros(batch, candidates)], dim=1)
        valid = history_valid(inputs)
        real = torch.cat([valid, valid.new_ones(batch, candidates)], dim=1)
        is_candidate = torch.arange(length + candidates, device=tokens.device).view(1, -1).expand(batch, -1) >= length
        seq = FlatSequence(tokens, actions, action_ids, all_times(inputs, candidates),
                           torch.arange(length + candidates, device=tokens.device).view(1, -1).expand(batch, -1),
                           torch.zeros_like(action_ids), real, is_candidate, context)
        if self.packed:
            packed, kept = pack(seq)
            hidden = unpack(self._encode(packed), kept, batch, length + candidates)
        else:
            hidden = self._encode(seq)
        logits = self.head(self.head_norm(hidden)).squeeze(-1).clamp(-self.logit_clamp, self.logit_clamp)
        return ModelOutput(logits=logits[:, length:], history_logits=logits[:, :length])

    def _encode(self, seq: FlatSequence) -> Tensor:
        x, context = seq.tokens, seq.context
        meta: Optional[CamaMeta] = None
        if self.fused_attention:
            if torch.jit.is_scripting():
                raise RuntimeError("attention='triton' is a GPU training path; export the softmax twin (same parameters)")
            else:
                meta = self.blocks[0].attention.meta(seq)
        for block in self.blocks:
            x = block(x, context, seq, meta)
        return x


def pack(seq: FlatSequence) -> Tuple[FlatSequence, Tensor]:
    """Padded rows -> one padding-free row (jagged, like cu_seqlens) and the flat index of what it kept."""
    batch, length = seq.real.shape
    kept = seq.real.flatten().nonzero().flatten()
    rows = torch.arange(batch, device=kept.device).repeat_interleave(length)[kept]
    packed = FlatSequence(
        tokens=_take(seq.tokens, kept), actions=_take(seq.actions, kept), action_ids=_take(seq.action_ids, kept),
        times=_take(seq.times, kept), position=_take(seq.position, kept), segment=rows.unsqueeze(0),
        real=_take(seq.real, kept), is_candidate=_take(seq.is_candidate, kept), context=seq.context.reshape(1, batch, -1),
    )
    return packed, kept


def _take(t: Tensor, kept: Tensor) -> Tensor:
    return t.flatten(0, 1)[kept].unsqueeze(0)


def unpack(hidden: Tensor, kept: Tensor, batch: int, length: int) -> Tensor:
    """Packed outputs `[1, K, d]` back to the padded `[B, N, d]` layout (zeros at padding)."""
    out = hidden.new_zeros(batch * length, hidden.shape[-1])
    return out.index_copy(0, kept, hidden[0]).view(batch, length, -1)
