"""Running a Solve request: edge-only on the drafter, or with a cloud (speculation, cloud-only).

A request that loses every cloud finishes on the drafter and says so, unless its quality floor
rules edge-only out: then it fails (``NoCloud``) rather than answer below the floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_node.clouds import CloudDirectory
from edge_node.planning import Cloud, Planner, SolveTask
from edge_node.speculation import (
    Account,
    CloudPicker,
    Hooks,
    Replan,
    SpecResult,
    SpecSettings,
    Speculator,
)
from models.base import CausalLM, Tokenizer
from models.generate import generate
from node_runtime.kinds import KPolicy, Mode, QualityFloor


class NoCloud(Exception):
    """No cloud is reachable and the request's quality floor rules out edge-only."""


@dataclass(frozen=True)
class SolveDefaults:
    """A node's defaults for what a request leaves open."""

    mode: Mode = Mode.SPECULATION  # mode when a request leaves it open and nobody plans
    k: int = 4  # starting draft length
    k_policy: KPolicy = KPolicy.HEURISTIC  # draft-length policy
    k_max: int = 16  # longest draft


class Solver:
    """Solve requests for one edge node."""

    def __init__(
        self,
        node_id: str,
        lm: CausalLM,
        tok: Tokenizer,
        clouds: CloudDirectory,
        spec: Speculator,
        defaults: SolveDefaults,
    ) -> None:
        self.lm, self.tok, self.clouds, self.spec = lm, tok, clouds, spec
        self.defaults = defaults
        self.planner = Planner(node_id, clouds, defaults.mode)

    async def solve(
        self, task: SolveTask, on_tokens: Callable[[list[int]], None] | None = None
    ) -> SpecResult:
        """Generate for ``task``; NoCloud when its floor forbids degrading and no cloud is left."""
        if task.mode is Mode.EDGE_ONLY and task.floor is QualityFloor.TARGET:
            raise ValueError("mode: edge-only is below the request's quality_floor target")
        decision = await self.planner.decide(task)
        if decision.mode is Mode.EDGE_ONLY:
            result = await self._edge_only(task)
            if on_tokens is not None and result.tokens:
                on_tokens(result.tokens)
            return result
        policy = task.k_policy or self.defaults.k_policy
        if decision.k and task.k_policy is None:
            # the coordinator chose k with every node's figures; revisions adjust it
            policy = KPolicy.FIXED
        settings = SpecSettings(
            max_new=task.max_new,
            eos_id=self.tok.eos_id,
            k=decision.k or task.k or self.defaults.k,
            k_policy=policy,
            k_max=self.defaults.k_max,
            pipelined=decision.pipelined,  # the request's own, or its plan's choice
            stop_ids=task.stop_ids,
        )
        hooks = Hooks(on_tokens=on_tokens, observe_rtt=self.clouds.observe_rtt)
        if decision.planned:

            async def replan(left: int, _current: str) -> Replan | None:
                return await self.planner.replan(task, left)

            hooks.replan = replan
        return await self.spec.run(
            list(task.prompt),
            task.params,
            settings,
            self._picker(task.floor),
            hooks,
            decision.first,
            decision.mode,
        )

    def _picker(self, floor: QualityFloor | None) -> CloudPicker:
        """The directory's pick; with a target floor, no cloud left is NoCloud, not degrading."""

        async def pick(exclude: Sequence[str]) -> Cloud | None:
            got = await self.clouds.pick(exclude)
            if got is None and floor is QualityFloor.TARGET:
                tried = ", ".join(exclude) or "none known"
                raise NoCloud(
                    f"no cloud node reachable (tried: {tried}); "
                    "quality_floor target rules out finishing on the edge alone"
                )
            return got

        return pick

    async def _edge_only(self, task: SolveTask) -> SpecResult:
        t0 = time.perf_counter()
        tokens = await self.spec.compute(
            lambda: generate(self.lm, list(task.prompt), task.params, task.max_new, self.tok.eos_id)
        )
        end = next((i + 1 for i, t in enumerate(tokens) if t in task.stop_ids), None)
        tokens = tokens[:end] if end is not None else tokens
        wall = time.perf_counter() - t0
        acc = Account(len(tokens), wall_s=wall, edge_model_s=wall, ttft_s=wall)
        return SpecResult(tokens, acc, final_mode=Mode.EDGE_ONLY)
