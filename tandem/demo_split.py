"""Where the time of each demo mode goes under device and link profiles, and which mode wins why.

Pure: the demo passes its per-mode totals (from the edges' accounts) and the profiles' names. Per
speculation round the split is draft ms (measured by the edge, whose model calls are padded to
its profile), network ms (the link profile's mean round trip) and verify ms (the cloud profile's
pass of k + 1 tokens at batch 1); whatever the round took beyond those three is the rest
(serialisation, queueing, the cloud's batching), and a pipelined round that took less than their
sum hid the difference by drafting ahead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from node_runtime.profiles import CallKind, Profile, cost_ms, get_profile

# Cached tokens a profile prices a call at: a bundled problem's prompt plus half its answer.
DEMO_CONTEXT_TOKENS = 48
STATIC = ("cloud-only", "speculation", "pipelined")  # lossless modes a request can be fixed to


@dataclass(frozen=True)
class Emulation:
    """What the demo emulates: the devices (optional) and the link between edges and cloud."""

    edge_device: str = ""  # edge profile name ("" : the real CPU)
    cloud_device: str = ""  # cloud profile name ("" : the real CPU)
    link: str = ""  # link profile name ("": loopback, no emulator)
    link_rtt_ms: float = 0.0  # the link profile's mean round trip of a small message

    @property
    def label(self) -> str:
        """``emulated: EDGE -> CLOUD, link PROFILE`` (the parts that are emulated)."""
        parts = []
        if self.edge_device or self.cloud_device:
            parts.append(f"{self.edge_device or 'cpu'} -> {self.cloud_device or 'cpu'}")
        if self.link:
            parts.append(f"link {self.link}")
        return "emulated: " + ", ".join(parts) if parts else ""


@dataclass(frozen=True)
class Totals:
    """One mode's totals over its requests, from the edges' accounts."""

    requests: int  # requests run
    tokens: int  # tokens generated
    wall_s: float  # summed request wall time, as each edge measured it
    rounds: int  # verify rounds (0: no speculation ran)
    drafted: int  # draft tokens sent for verification
    edge_model_s: float  # the drafter's time, drafting ahead included


def split(mode: str, t: Totals, emu: Emulation) -> dict[str, float]:
    """The mode's time per token and, per round (speculation) or per token (the others), where
    it went; ``rest_ms`` may be negative (time hidden by overlap). ``cloud_device_ms_per_token``
    is the cloud profile's device time per generated token at batch 1 (batching shares passes,
    so this is an upper bound). A planned run that mixed modes is split as speculation."""
    if not t.tokens:
        return {}
    out = {"ms_per_token": 1e3 * t.wall_s / t.tokens}
    cloud = get_profile(emu.cloud_device) if emu.cloud_device else None
    if t.rounds:
        k = t.drafted / t.rounds
        verify = _verify_ms(cloud, k) if cloud is not None else 0.0
        draft = 1e3 * t.edge_model_s / t.rounds
        round_ms = 1e3 * t.wall_s / t.rounds
        out |= {
            "tokens_per_round": t.tokens / t.rounds,
            "k": k,
            "round_ms": round_ms,
            "draft_ms": draft,
            "network_ms": emu.link_rtt_ms,
            "verify_ms": verify,
            "rest_ms": round_ms - draft - emu.link_rtt_ms - verify,
            "cloud_device_ms_per_token": verify * t.rounds / t.tokens,
        }
    elif mode == "edge-only":
        out |= {"draft_ms": 1e3 * t.edge_model_s / t.tokens, "cloud_device_ms_per_token": 0.0}
    else:  # the target generated alone (cloud-only, or a plan that chose it)
        decode = cost_ms(cloud, CallKind.DECODE, 1, 1, DEMO_CONTEXT_TOKENS) if cloud else 0.0
        network = emu.link_rtt_ms * t.requests / t.tokens  # one Generate call per request
        out |= {
            "decode_ms": decode,
            "network_ms": network,
            "rest_ms": out["ms_per_token"] - decode - network,
            "cloud_device_ms_per_token": decode,
        }
    return out


def _verify_ms(cloud: Profile, k: float) -> float:
    """The profile's verify pass at batch 1 for the mean draft length (k + 1 tokens fed)."""
    return cost_ms(cloud, CallKind.VERIFY, 1, max(round(k), 1) + 1, DEMO_CONTEXT_TOKENS)


def describe(mode: str, s: Mapping[str, float]) -> str:
    """One line: the mode's ms per token and where it goes."""
    head = f"{mode:>12}: {s['ms_per_token']:7.1f} ms/token"
    if "round_ms" in s:
        parts = f"draft {s['draft_ms']:.1f} + network {s['network_ms']:.1f} + verify "
        parts += f"{s['verify_ms']:.1f}"
        rest = s["rest_ms"]
        extra = f" + other {rest:.1f}" if rest >= 0 else f", {-rest:.1f} hidden by drafting ahead"
        return (
            f"{head} = a round of {s['round_ms']:.1f} ms ({parts}{extra}) / "
            f"{s['tokens_per_round']:.2f} tokens (k {s['k']:.1f})"
        )
    if "decode_ms" in s:
        return (
            f"{head} = decode {s['decode_ms']:.1f} + network {s['network_ms']:.1f} "
            f"(one round trip per request) + other {s['rest_ms']:.1f}"
        )
    if "draft_ms" in s:
        return f"{head} = draft {s['draft_ms']:.1f} (the drafter alone, below target quality)"
    return head


def verdict(splits: Mapping[str, Mapping[str, float]], emu: Emulation) -> str:
    """Which lossless static mode wins on latency per token here and why, and how close the
    coordinator's plans came to it."""
    ranked = sorted(
        (m for m in splits if m in STATIC and splits[m]), key=lambda m: splits[m]["ms_per_token"]
    )
    if not ranked:
        return "no lossless mode ran"
    best, s = ranked[0], splits[ranked[0]]
    where = emu.label.removeprefix("emulated: ") or "this machine"
    text = f"{best} wins on {where}: {s['ms_per_token']:.1f} ms/token"
    if len(ranked) > 1:
        runner = ranked[1]
        ratio = splits[runner]["ms_per_token"] / s["ms_per_token"]
        text += f", {ratio:.2f}x faster than {runner}"
    why = _why(best, splits)
    text += ". " + why[:1].upper() + why[1:]
    planned = splits.get("planned")
    if planned:
        ratio = planned["ms_per_token"] / s["ms_per_token"]
        text += (
            f" The coordinator's plans ran at {planned['ms_per_token']:.1f} ms/token, {ratio:.2f}"
            f" of {best}'s time."
        )
    edge = splits.get("edge-only")
    if edge and edge["ms_per_token"] < s["ms_per_token"]:
        text += (
            f" Edge-only is faster still ({edge['ms_per_token']:.1f} ms/token) but answers with"
            " the drafter's quality."
        )
    return text


def _why(best: str, splits: Mapping[str, Mapping[str, float]]) -> str:
    s = splits[best]
    cloud = splits.get("cloud-only", {})
    if "round_ms" in s:
        why = (
            f"each round of {s['round_ms']:.1f} ms yields {s['tokens_per_round']:.2f} tokens, "
            f"so the round trip ({s['network_ms']:.1f} ms) and the verify pass "
            f"({s['verify_ms']:.1f} ms) are shared by several tokens"
        )
        if cloud.get("decode_ms"):
            why += f", where cloud-only pays a {cloud['decode_ms']:.1f} ms decode for each"
        if s["rest_ms"] < 0:
            why += f"; drafting ahead hid {-s['rest_ms']:.1f} ms a round"
        return why + "."
    if "decode_ms" in s:
        spec = [splits[m] for m in ("speculation", "pipelined") if splits.get(m, {}).get("k")]
        if not spec:
            return "no speculation ran to compare with."
        r = min(spec, key=lambda x: x["ms_per_token"])
        cause = (
            "drafting k tokens on the edge costs more than the decodes it saves"
            if r["draft_ms"] >= r["network_ms"]
            else "the round trip each round pays costs more than the decodes it saves"
        )
        return (
            f"the best speculation round took {r['round_ms']:.1f} ms (draft {r['draft_ms']:.1f}"
            f", network {r['network_ms']:.1f}, verify {r['verify_ms']:.1f}) for "
            f"{r['tokens_per_round']:.2f} tokens, {r['ms_per_token']:.1f} ms a token against "
            f"a {s['decode_ms']:.1f} ms decode: {cause}."
        )
    return ""
