"""The serving input contract as JSON: what a serving system fills, and from which raw columns."""

from __future__ import annotations

from typing import Any, Dict, List

from recsys.export.module import HISTORY_LENGTHS, HISTORY_TIMESTAMP, REQUEST_TIMESTAMP, candidate_key, history_key, side_key

CONTRACT_FORMAT = "recsys-scoring/1"


def describe_contract(metadata: dict, max_history: int, num_chunks: int) -> Dict[str, Any]:
    spec = metadata["spec"]
    tables = {t["name"]: t for t in spec["tables"]}
    rows = metadata["num_embeddings"]

    def id_input(key: str, shape: List[str], field: dict, meaning: str) -> Dict[str, Any]:
        table = tables[field["table"]]
        return {"key": key, "dtype": "int64", "shape": shape, "meaning": meaning, "raw_column": field["column"], "role": field["role"],
                "table": table["name"], "encoding": table["encoding"], "num_embeddings": int(rows[table["name"]]),
                **({"vocabulary": f"vocab/{table['name']}.parquet"} if table["encoding"] == "vocab" else {"buckets": table.get("buckets")})}

    sequence = [f for f in spec["fields"] if f["role"] == "sequence"]
    side = [f for f in spec["fields"] if f["role"] != "sequence"]
    inputs: List[Dict[str, Any]] = [
        {"key": HISTORY_LENGTHS, "dtype": "int64", "shape": ["B"], "meaning": "real history events per request, 0..L"},
        {"key": HISTORY_TIMESTAMP, "dtype": "int64", "shape": ["B", "L"], "meaning": "event times in seconds, oldest first, right-padded"},
    ]
    inputs += [id_input(history_key(f["column"]), ["B", "L"], f, "history event rows, right-padded like history.timestamp") for f in sequence]
    inputs += [id_input(candidate_key(f["column"]), ["B", "M"], f, "candidate rows") for f in sequence if f.get("candidate", True)]
    inputs += [id_input(side_key(f["role"], f["column"]), ["B"], f, f"{f['role']} row of the request") for f in side]
    inputs.append({"key": REQUEST_TIMESTAMP, "dtype": "int64", "shape": ["B"], "meaning": "request time in seconds"})
    return {
        "format": CONTRACT_FORMAT,
        "inputs": inputs,
        "output": {"forward": "[B, M] float32 click probabilities", "logits": "[B, M] float32 logits (method `logits`)"},
        "max_history": max_history,
        "num_chunks": num_chunks,
        "history_rule": f"events strictly before the request time; the most recent {max_history} are kept",
        "excluded_history_actions": list(spec.get("history", {}).get("exclude_actions", [])),
        "oov_row": 0,
        "timestamp_unit": "s",
        "utc_offset_seconds": int(metadata.get("utc_offset_seconds", 0)),
    }
