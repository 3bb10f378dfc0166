"""Synthetic behavior logs with a known generating process, vectorised with NumPy.

The process (every draw comes from one `numpy.random.Generator` seeded by `seed`):

* Users. Each user `u` has a long-term interest distribution over categories (a sparse Dirichlet)
  for weekdays and another for weekends, two daily habit hours (a morning slot `h1_u` and an evening
  slot `h2_u`), a personal session rhythm (the number of habit slots skipped between sessions is
  `Poisson(λ_u)` with `λ_u` log-normal), a personal mean session length and a personal
  within-session gap (exponential, mean log-normal between seconds and minutes; 20 % of gaps are 0,
  i.e. several impressions of one request share a timestamp).
* Sessions. A session's topic is drawn from the long-term distribution of its day type (55 %),
  continues the previous session's topic (30 %: interest drift between sessions) or explores a
  popular category (15 %).
* Events. An impression shows an item of the session topic (70 %) or of a popular category, items
  Zipf-popular inside a category; 10 % of impressions re-show an item uniformly drawn from the
  user's whole earlier history, so that recognising a repeat needs the long history.
* Ground truth. The click probability is `sigmoid(z)` with
  `z = -2.3 + 1.2·aff_long + 1.0·[cat = previous session's topic] + 0.9·min(n_session_cat, 3)/3
  + 0.6·cos(2π(hour − h1_u)/24) + 1.3·[item seen earlier] + q_item`, where `aff_long` is the
  log-ratio of the category's share among all the user's earlier events to its uniform share
  (long-range history), `n_session_cat` counts earlier same-category events in the current session,
  and `q_item ~ N(0, 0.4)` is item quality. Clicks convert with probability `0.15 + 0.25·[repeat]`.
  `action` is impression / click / conversion and `label = 1` for click and conversion; the exact
  probability is written as `true_ctr` so the Bayes-optimal AUC is known.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EPOCH_START = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
DAY = 86_400
ACTIONS = np.array(["impression", "click", "conversion"])
DEVICES = np.array(["ios", "android", "web"])


@dataclass(frozen=True)
class SynthConfig:
    users: int
    events_per_user: int
    seed: int = 0
    categories: int = 64
    items_per_category: int = 400
    rows_per_file: int = 2_000_000


def _segment_starts(lengths: np.ndarray) -> np.ndarray:
    """First flat index of every segment for segments of the given lengths."""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _rank_within_groups(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions carry the same key (stable, vectorised)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    new_group = np.empty(len(keys), dtype=bool)
    new_group[:1] = True
    new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(keys)), 0))
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = np.arange(len(keys)) - group_start
    return ranks


def _sample_rows(rng: np.random.Generator, cdf: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one column index per entry of `rows` from the row-wise CDFs `cdf[rows]` in O(n log n)."""
    width = cdf.shape[1]
    flat = (cdf + np.arange(cdf.shape[0])[:, None]).ravel()
    draws = rows + rng.random(len(rows)) * (1 - 1e-12)
    return np.searchsorted(flat, draws, side="right") - rows * width


def _user_traits(rng: np.random.Generator, cfg: SynthConfig) -> dict[str, np.ndarray]:
    users, cats = cfg.users, cfg.categories
    weekday = rng.dirichlet(np.full(cats, 0.15), size=users)
    weekend = rng.dirichlet(np.full(cats, 0.15), size=users)
    return {
        "weekday_cdf": np.cumsum(weekday, axis=1),
        "weekend_cdf": np.cumsum(weekend, axis=1),
        "hour_morning": rng.integers(6, 12, size=users),
        "hour_evening": rng.integers(17, 23, size=users),
        "skip_rate": np.exp(rng.normal(0.0, 0.8, size=users)),
        "session_len": np.clip(np.exp(rng.normal(2.0, 0.6, size=users)), 2, 60),
        "gap_mean": np.exp(rng.normal(3.0, 1.0, size=users)),
        "segment": rng.integers(0, 8, size=users),
        "start_slot": rng.integers(0, 20, size=users),
    }


def _event_layout(rng: np.random.Generator, cfg: SynthConfig, traits: dict[str, np.ndarray]):
    """Per-event user, session and within-session position, users' events contiguous."""
    counts = np.maximum(2, np.rint(cfg.events_per_user * 2 * rng.beta(4, 4, size=cfg.users))).astype(np.int64)
    user = np.repeat(np.arange(cfg.users), counts)
    user_start = _segment_starts(counts)
    first_of_user = np.zeros(len(user), dtype=bool)
    first_of_user[user_start] = True
    new_session = (rng.random(len(user)) < 1.0 / traits["session_len"][user]) | first_of_user
    session = np.cumsum(new_session) - 1
    return counts, user, user_start, first_of_user, new_session, session


def _session_times(rng, traits, session_user, session_first_of_user) -> np.ndarray:
    """Session start times on the users' habit slots (two a day), skipping Poisson(λ_u) slots.

    Every user's last session falls within the final ten days, so a global time split finds most
    users in every split (heavy users simply started earlier)."""
    skips = 1 + rng.poisson(traits["skip_rate"][session_user])
    skips[session_first_of_user] = 0
    total = np.cumsum(skips)
    base = np.maximum.accumulate(np.where(session_first_of_user, total, 0))
    relative_slot = total - base
    last_of_user = np.append(session_first_of_user[1:], True)
    user_span = np.zeros(session_user.max() + 1, dtype=np.int64)
    user_span[session_user[last_of_user]] = relative_slot[last_of_user]
    latest_end = int(user_span.max()) + 40
    slot = relative_slot + latest_end - user_span[session_user] - traits["start_slot"][session_user]
    hour = np.where(slot % 2 == 0, traits["hour_morning"][session_user], traits["hour_evening"][session_user])
    jitter = rng.normal(0, 1200, size=len(slot)).clip(-3000, 3000)
    return (EPOCH_START + (slot // 2) * DAY + hour * 3600 + jitter).astype(np.int64)


def _session_topics(rng, cfg, traits, session_user, session_first_of_user, session_start) -> np.ndarray:
    weekend = ((session_start - EPOCH_START) // DAY) % 7 >= 5
    long_term = np.where(
        weekend,
        _sample_rows(rng, traits["weekend_cdf"], session_user),
        _sample_rows(rng, traits["weekday_cdf"], session_user),
    )
    explore = np.minimum(rng.zipf(1.5, size=len(session_user)) - 1, cfg.categories - 1)
    source = rng.random(len(session_user))
    fresh = np.where(source < 0.55, long_term, explore)
    continues = (source >= 0.85) & ~session_first_of_user
    # A continuing session inherits the topic of the latest fresh session: forward fill.
    last_fresh = np.maximum.accumulate(np.where(continues, 0, np.arange(len(session_user))))
    return fresh[last_fresh]


def generate_events(cfg: SynthConfig) -> pa.Table:
    """The whole synthetic log as an Arrow table, users' events time-ordered."""
    rng = np.random.default_rng(cfg.seed)
    traits = _user_traits(rng, cfg)
    counts, user, user_start, first_of_user, new_session, session = _event_layout(rng, cfg, traits)
    n = len(user)

    session_user = user[new_session]
    session_first_of_user = first_of_user[new_session]
    session_start = _session_times(rng, traits, session_user, session_first_of_user)
    session_topic = _session_topics(rng, cfg, traits, session_user, session_first_of_user, session_start)
    previous_topic = np.where(session_first_of_user, -1, np.roll(session_topic, 1))

    gaps = rng.exponential(traits["gap_mean"][user]).astype(np.int64)
    gaps[rng.random(n) < 0.2] = 0
    gaps[new_session] = 0
    csum = np.cumsum(gaps)
    session_first_event = np.flatnonzero(new_session)
    offset_in_session = csum - csum[session_first_event][session]
    timestamp = session_start[session] + offset_in_session

    on_topic = rng.random(n) < 0.7
    popular = np.minimum(rng.zipf(1.3, size=n) - 1, cfg.categories - 1)
    category = np.where(on_topic, session_topic[session], popular)
    local_item = np.minimum((rng.random(n) ** 2.5 * cfg.items_per_category).astype(np.int64), cfg.items_per_category - 1)
    item_permutation = rng.permutation(cfg.categories * cfg.items_per_category)
    item = item_permutation[category * cfg.items_per_category + local_item]

    position = np.arange(n) - user_start[user]
    reshow = (rng.random(n) < 0.1) & (position > 0)
    earlier = user_start[user] + np.floor(rng.random(n) * position).astype(np.int64)
    item = np.where(reshow, item[earlier], item)
    category = np.where(reshow, category[earlier], category)

    seen_before = _rank_within_groups(user.astype(np.int64) * (cfg.categories * cfg.items_per_category) + item) > 0
    same_cat_before = _rank_within_groups(user.astype(np.int64) * cfg.categories + category)
    session_cat_before = _rank_within_groups(session.astype(np.int64) * cfg.categories + category)
    aff_long = np.log((same_cat_before + 1.0) / (position / cfg.categories + 1.0)).clip(-2, 3)
    hour = ((timestamp - EPOCH_START) % DAY) / 3600.0
    quality = rng.normal(0, 0.4, size=cfg.categories * cfg.items_per_category)
    logit = (
        -2.3
        + 1.2 * aff_long
        + 1.0 * (category == previous_topic[session])
        + 0.9 * np.minimum(session_cat_before, 3) / 3
        + 0.6 * np.cos(2 * np.pi * (hour - traits["hour_morning"][user]) / 24)
        + 1.3 * seen_before
        + quality[item]
    )
    true_ctr = 1.0 / (1.0 + np.exp(-logit))
    clicked = rng.random(n) < true_ctr
    converted = clicked & (rng.random(n) < 0.15 + 0.25 * seen_before)
    action_code = clicked.astype(np.int64) + converted

    return pa.table(
        {
            "user_id": pa.array(user.astype(np.int64)),
            "item_id": pa.array(item.astype(np.int64)),
            "category_id": pa.array(category.astype(np.int64)),
            "timestamp": pa.array(timestamp),
            "action": pa.array(ACTIONS[action_code]),
            "label": pa.array(clicked.astype(np.int8)),
            "user_segment": pa.array(traits["segment"][user].astype(np.int64)),
            "device": pa.array(DEVICES[rng.integers(0, 3, size=len(session_user))][session]),
            "true_ctr": pa.array(true_ctr.astype(np.float32)),
        }
    )


def write_synthetic(cfg: SynthConfig, out_dir: str | Path) -> dict:
    """Write the log as `part-*.parquet` plus `_synth.json`; the same seed writes the same bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("part-*.parquet"):
        stale.unlink()
    table = generate_events(cfg)
    files = []
    for index, start in enumerate(range(0, table.num_rows, cfg.rows_per_file)):
        path = out / f"part-{index:05d}.parquet"
        pq.write_table(table.slice(start, cfg.rows_per_file), path, compression="zstd", row_group_size=500_000)
        files.append(path.name)
    labels = table.column("label").to_numpy()
    summary = {
        "config": asdict(cfg),
        "events": table.num_rows,
        "users": cfg.users,
        "label_rate": float(labels.mean()),
        "files": files,
    }
    (out / "_synth.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
