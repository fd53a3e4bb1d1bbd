"""What probing costs: the ``probe --dry-run`` estimate per day at the configured intervals."""

from __future__ import annotations

from modelwatch.config import ProbeJob

DAY_S = 86400.0
PROMPT_OVERHEAD_TOKENS = 8  # chat framing around the prompt


def estimate_input_tokens(prompt: str) -> int:
    """A rough token count: ~4 characters per token plus message framing."""
    return PROMPT_OVERHEAD_TOKENS + max(1, len(prompt) // 4)


def dry_run_lines(jobs: list[ProbeJob]) -> list[str]:
    """One line per probe and a total: probes/day, tokens/day (upper bound) and USD/day."""
    lines = []
    total_usd, unpriced = 0.0, 0
    for job in jobs:
        per_day = DAY_S / job.probe.interval
        tin = estimate_input_tokens(job.probe.prompt) * per_day
        tout = job.probe.max_tokens * per_day
        price = job.price
        if price is None:
            unpriced += 1
            usd = "price unknown"
        else:
            cost = (tin * price.input + tout * price.output) / 1e6
            total_usd += cost
            usd = f"${cost:.4f}/day"
        lines.append(f"{job.target:<24} {job.probe.kind:<8} {per_day:>8.0f} probes/day  "
                     f"<= {tin:,.0f} in + {tout:,.0f} out tokens/day  {usd}")
    tail = f"total: ${total_usd:.4f}/day (upper bound: every probe uses its full output cap)"
    if unpriced:
        tail += f"; {unpriced} probe(s) without a price (set targets[].price)"
    lines.append(tail)
    return lines
