"""What generation costs: the price table (USD per million tokens), the cost of one reply, and the running usage.

    from synthembed.generation.cost import cost_usd, load_prices
    prices = load_prices(overrides={"my-model": {"input": 1.0, "output": 2.0}})
    cost_usd("gpt-4o-mini-2024-07-18", 1000, 500, prices)    # 0.00045: priced as gpt-4o-mini (longest prefix)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SynthembedError

# USD per million tokens (input, output), list prices published by OpenAI; override with `prices=` / --prices FILE.
# Matching is by longest prefix, so "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini".
PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4": (30.00, 60.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    # The loopback stand-in costs nothing to run; it is priced like gpt-4o-mini so that the cost path (stats, the
    # progress bar, --max-cost) is exercised by the smoke study and the tests. Its dollars are hypothetical.
    "loopback": (0.15, 0.60),
}


def load_prices(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, tuple[float, float]]:
    """The price table, with a JSON/YAML file `{model: {input: usd_per_1m, output: usd_per_1m}}` or a dict on top.

    >>> load_prices(overrides={"my-model": {"input": 1.0, "output": 2.0}})["my-model"]
    (1.0, 2.0)
    """
    table = dict(PRICES)
    items: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SynthembedError(f"price table {path}: no such file")
        import yaml

        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise SynthembedError(f"price table {path}: expected {{model: {{input: USD/1M, output: USD/1M}}}}")
        items.update(loaded)
    items.update(overrides or {})
    for model, value in items.items():
        try:
            if isinstance(value, dict):
                table[str(model)] = (float(value["input"]), float(value["output"]))
            else:
                inp, out = value
                table[str(model)] = (float(inp), float(out))
        except (KeyError, TypeError, ValueError):
            raise SynthembedError(f"price for {model!r} must be {{input: USD per 1M tokens, output: USD per 1M}}") from None
    return table


def price_of(model: str, prices: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for `model` by longest matching prefix; None when unpriced."""
    name = model.split("/")[-1]
    best = max((p for p in prices if name.startswith(p)), key=len, default=None)
    return prices[best] if best is not None else None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, prices: dict[str, tuple[float, float]]) -> float:
    """USD for one reply's tokens; 0 for an unpriced model (stats lists those as unpriced_models).

    >>> round(cost_usd("gpt-4o-mini-2024-07-18", 1_000_000, 0, PRICES), 2)
    0.15
    """
    price = price_of(model, prices)
    if price is None:
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


@dataclass
class Usage:
    """Running totals: requests answered fresh vs from the cache, tokens, cost, retries and failures by kind.

    `cost_usd` prices every answer, cached ones too (what the run's data cost); `fresh_cost_usd` only those paid for now.
    """

    retries: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_models: set = field(default_factory=set)
    fresh_cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The totals as stats.json's "session" shows them (costs rounded to 1e-6 USD)."""
        return {"requests": self.requests, "cache_hits": self.cache_hits, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6),
                "fresh_cost_usd": round(self.fresh_cost_usd, 6), "retries": dict(sorted(self.retries.items())),
                "failures": dict(sorted(self.failures.items())), "unpriced_models": sorted(self.unpriced_models)}
