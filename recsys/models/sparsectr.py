"""SparseCTR (Lai et al., 2026; ../shared/specs/SPARSECTR.md), readable top to bottom.

Tokens: history event = Linear(concat(item, category, ..., action embeddings)); candidate = the
same projection with a learned "candidate" action. The profile fields form e_U and one profile
token, an always-visible key of the local branch. `SparseBlock`s apply EvoAttention (three sparse
branches with RelTemporal biases, fused by gates) and a SwiGLU FFN, pre-norm with residuals. The
head scores each candidate from its final state, e_U and its own embedding.

Options ([summary]/[ours] choices of the spec), all in `SparseCTRConfig`:
`fusion` gate (sigmoid per position and head, as NSA) | softmax (over the three branches);
`compression` mean | mlp (a learned per-token map averaged over the chunk);
`weekend_rule` same_type (b_wkd = 0 when both days are of one type) | both_weekend;
`attention` structural (the linear-cost kernels) | triton (the global and transition branches in
one fused Triton kernel, `recsys.ops.evo_keyed_triton`, the local branch's history part in another,
`recsys.ops.evo_local_triton`; a GPU training path, export serves the structural twin) | reference (dense masks, tests) | full (every earlier event: the
`transformer` baseline); `temporal_bias` on/off; `tail`, `window`, `num_chunks`
default to the feature spec's chunking section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.base import ModelOutput, RankingModel, SequenceInputs, all_times, history_valid
from recsys.models.embedding import EmbeddedBatch, EmbeddingLayout
from recsys.models.layers import PredictionHead, SwiGLU
from recsys.ops.evo_attention import EvoGeometry, evo_attend, evo_attend_packed_gated, evo_branches_reference, evo_geometry
from recsys.ops.temporal import WEEKEND_BOTH, WEEKEND_SAME_TYPE, alibi_scales, composite_temporal_bias


@dataclass(frozen=True)
class SparseCTRConfig:
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    tail: Optional[int] = None
    window: Optional[int] = None
    fusion: Literal["gate", "softmax"] = "gate"
    compression: Literal["mean", "mlp"] = "mean"
    weekend_rule: Literal["same_type", "both_weekend"] = "same_type"
    attention: Literal["structural", "triton", "reference", "full"] = "structural"
    temporal_bias: bool = True
    head_hidden: Tuple[int, ...] = field(default=(128, 64))
    dropout: float = 0.0


class EvoAttention(nn.Module):
    """Shared Q, K, V; three sparse branches; per-position, per-head fusion."""

    def __init__(self, cfg: SparseCTRConfig, tail: int, window: int, utc_offset: int, weekend_rule: int):
        super().__init__()
        if cfg.d_model % cfg.heads:
            raise ValueError(f"d_model {cfg.d_model} is not a multiple of heads {cfg.heads}")
        self.heads, self.head_dim = cfg.heads, cfg.d_model // cfg.heads
        self.tail, self.window, self.utc_offset, self.weekend_rule = tail, window, utc_offset, weekend_rule
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.gate = nn.Linear(cfg.d_model, 3 * cfg.heads)
        self.fusion = cfg.fusion
        self.reference = cfg.attention == "reference"
        self.fused_local = cfg.attention == "triton"
        self.scales = nn.Parameter(alibi_scales(cfg.heads), requires_grad=cfg.temporal_bias)
        if not cfg.temporal_bias:
            self.scales.data.zero_()
        self.compress: Optional[nn.Module] = None
        if cfg.compression == "mlp":
            self.compress = nn.Sequential(nn.Linear(self.head_dim, self.head_dim), nn.SiLU(), nn.Linear(self.head_dim, self.head_dim))

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, profile: Tensor, times: Tensor, inputs: SequenceInputs, geometry: Optional[EvoGeometry]) -> Tensor:
        batch, total, width = x.shape
        packed = self.qkv(x).view(batch, total, 3, self.heads, self.head_dim)  # q, k, v of a position side by side
        q, k, v = packed[:, :, 0].transpose(1, 2), packed[:, :, 1].transpose(1, 2), packed[:, :, 2].transpose(1, 2)
        _, k_profile, v_profile = self.qkv(profile).chunk(3, dim=-1)
        k_profile, v_profile = self._heads(k_profile), self._heads(v_profile)
        k_summary, v_summary = k, v
        if self.compress is not None:
            k_summary, v_summary = self.compress(k), self.compress(v)
        if self.reference:
            if torch.jit.is_scripting():
                raise RuntimeError("attention='reference' is the dense-mask test path; export the structural model (same parameters)")
            else:
                branches = evo_branches_reference(q, k, v, k_profile, v_profile, k_summary, v_summary, times, inputs.chunk_id, inputs.chunk_start,
                                                  inputs.chunk_end, inputs.chunk_valid, self.tail, self.window, self.scales, self.utc_offset, self.weekend_rule)
        elif self.fused_local:
            if torch.jit.is_scripting():
                raise RuntimeError("attention='triton' is a GPU training path; export the structural model (same parameters)")
            else:
                assert geometry is not None, "attention='triton' needs the batch's evo_geometry"
                summaries = (None, None) if self.compress is None else (k_summary, v_summary)
                # the kernels sum the gated branches themselves (no pass over three outputs either way)
                fused = evo_attend_packed_gated(packed, k_profile, v_profile, *summaries, geometry, self.window, self.scales,
                                                self.weekend_rule, self._gates(x).permute(2, 0, 3, 1))
                return self.out(fused.transpose(1, 2).reshape(batch, total, width))
        else:
            assert geometry is not None, "structural attention needs the batch's evo_geometry"
            branches = evo_attend(q, k, v, k_profile, v_profile, k_summary, v_summary, geometry, self.window, self.scales)
        gates = self._gates(x).permute(2, 0, 3, 1).unsqueeze(-1)  # [3, B, H, T, 1]
        fused = gates[0] * branches[0] + gates[1] * branches[1] + gates[2] * branches[2]
        return self.out(fused.transpose(1, 2).reshape(batch, total, width))

    def _gates(self, x: Tensor) -> Tensor:
        """The branches' gates `[B, T, 3, H]` (global, transition, local) per position and head."""
        gate_logits = self.gate(x).view(x.shape[0], x.shape[1], 3, self.heads)
        return torch.sigmoid(gate_logits) if self.fusion == "gate" else torch.softmax(gate_logits, dim=2)


class FullAttention(nn.Module):
    """What SparseCTR sparsifies: every earlier history event and the profile token, via SDPA.

    History is causal over real events; a candidate sees the history and itself. Without the
    temporal bias the mask is boolean, which keeps SDPA on its fused kernels."""

    def __init__(self, cfg: SparseCTRConfig, utc_offset: int, weekend_rule: int):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.d_model // cfg.heads
        self.utc_offset, self.weekend_rule = utc_offset, weekend_rule
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.temporal_bias = cfg.temporal_bias
        self.scales = nn.Parameter(alibi_scales(cfg.heads), requires_grad=cfg.temporal_bias)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, profile: Tensor, times: Tensor, inputs: SequenceInputs, geometry: Optional[EvoGeometry]) -> Tensor:
        batch, total, width = x.shape
        length = inputs.chunk_id.shape[1]
        keys_in = torch.cat([profile, x], dim=1)
        q = self._heads(self.qkv(x).chunk(3, dim=-1)[0])
        _, k, v = self.qkv(keys_in).chunk(3, dim=-1)
        k, v = self._heads(k), self._heads(v)
        position = torch.arange(total, device=x.device)
        causal = position.view(1, -1) <= position.view(-1, 1)
        candidate_rows = position.view(-1, 1) >= length
        history_keys = position.view(1, -1) < length
        allowed = torch.where(candidate_rows, history_keys | (position.view(1, -1) == position.view(-1, 1)), causal)
        valid = history_valid(inputs)
        real = torch.cat([valid, valid.new_ones(batch, total - length)], dim=1)
        visible = allowed.unsqueeze(0) & real.unsqueeze(1)
        visible = torch.cat([visible.new_ones(batch, total, 1), visible], dim=2).unsqueeze(1)  # profile key first
        if self.temporal_bias:
            bias = composite_temporal_bias(times, times, self.scales, self.utc_offset, self.weekend_rule)
            mask = torch.cat([bias.new_zeros(batch, self.heads, total, 1), bias], dim=3).masked_fill(~visible, float("-inf"))
        else:
            mask = visible
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(batch, total, width))


class SparseBlock(nn.Module):
    def __init__(self, cfg: SparseCTRConfig, attention: nn.Module):
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.d_model)
        self.attention = attention
        self.ffn_norm = nn.RMSNorm(cfg.d_model)
        self.ffn = SwiGLU(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, profile: Tensor, times: Tensor, inputs: SequenceInputs, geometry: Optional[EvoGeometry]) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), self.attention_norm(profile), times, inputs, geometry))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SparseCTR(RankingModel):
    def __init__(self, layout: EmbeddingLayout, cfg: SparseCTRConfig, chunking: dict, utc_offset_seconds: int = 0):
        super().__init__(layout)
        self.cfg = cfg
        self.tail = cfg.tail or int(chunking["tail_length"])
        self.window = cfg.window or int(chunking["window"])
        self.utc_offset = utc_offset_seconds
        self.weekend_rule = WEEKEND_BOTH if cfg.weekend_rule == "both_weekend" else WEEKEND_SAME_TYPE
        self.structural = cfg.attention in ("structural", "triton")
        self.fused_local = cfg.attention == "triton"
        self.token = nn.Linear(layout.content_dim + layout.action_dim, cfg.d_model)
        self.profile = nn.Linear(layout.side_dim, cfg.d_model) if layout.side_dim else None
        self.profile_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.blocks = nn.ModuleList([SparseBlock(cfg, self._attention(cfg)) for _ in range(cfg.layers)])
        self.final_norm = nn.RMSNorm(cfg.d_model)
        self.head = PredictionHead(cfg.d_model, layout.side_dim, layout.content_dim, cfg.head_hidden, cfg.dropout)
        self._init_weights()

    def _attention(self, cfg: SparseCTRConfig) -> nn.Module:
        if cfg.attention == "full":
            return FullAttention(cfg, self.utc_offset, self.weekend_rule)
        return EvoAttention(cfg, self.tail, self.window, self.utc_offset, self.weekend_rule)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            # Residual projections start small, as in GPT-2, so deep stacks begin near identity.
            nn.init.normal_(block.attention.out.weight, std=0.02 / math.sqrt(2 * len(self.blocks)))

    def score(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> ModelOutput:
        length = inputs.history_times.shape[1]
        state = self.final_norm(self.encode(embedded, inputs)[:, length:])
        return ModelOutput(self.head(state, embedded.side, embedded.candidate_content), None)

    def encode(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> Tensor:
        """Final hidden states `[B, L + M, d]` of history events and candidates."""
        batch = inputs.history_times.shape[0]
        candidates = embedded.candidate_content.shape[1]
        candidate_action = embedded.candidate_action.expand(batch, candidates, -1)
        features = torch.cat([torch.cat([embedded.history_content, embedded.history_action], dim=-1),
                              torch.cat([embedded.candidate_content, candidate_action], dim=-1)], dim=1)
        real = torch.cat([history_valid(inputs), history_valid(inputs).new_ones(batch, candidates)], dim=1)
        x = self.token(features) * real.unsqueeze(-1).to(features.dtype)
        profile = self.profile_token.expand(batch, 1, -1)
        if self.profile is not None:
            profile = profile + self.profile(embedded.side).unsqueeze(1)
        times = all_times(inputs, candidates)
        geometry: Optional[EvoGeometry] = None
        if self.structural:
            geometry = evo_geometry(times, inputs.chunk_id, inputs.chunk_start, inputs.chunk_end, inputs.chunk_valid, candidates,
                                    self.tail, self.window, self.utc_offset, self.weekend_rule, self.fused_local)
        for block in self.blocks:
            x = block(x, profile, times, inputs, geometry)
        return x
