"""Where a Solve request runs: its own mode, the coordinator's plan, or this node's default.

A plan names the mode, the draft length, the first cloud and whether speculation drafts ahead
(pipelined); a speculating request asks again every few rounds (``replan``), so it can move to a
better cloud or mode mid-request. A request that insists on drafting ahead is planned so; any
other lets the plan choose, since this edge can always draft ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_node.clouds import CloudDirectory, Plan, PlanAsk
from edge_node.speculation import Replan
from models.sampling import SamplingParams
from node_runtime.kinds import KPolicy, Mode, Objective, QualityFloor
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

Cloud = tuple[str, pb_grpc.CloudStub]  # a cloud's node id and a stub to it


@dataclass(frozen=True)
class SolveTask:
    """One generation request, checked and tokenized."""

    prompt: tuple[int, ...]  # token ids, BOS first
    params: SamplingParams
    max_new: int  # new tokens at the most
    mode: Mode | None = None  # None: the coordinator plans (or the node's default)
    k: int = 0  # starting draft length; 0: the plan's or the node's
    k_policy: KPolicy | None = None  # None: the node's (fixed when a plan chose k)
    objective: Objective = Objective.LATENCY  # what a plan minimizes
    floor: QualityFloor | None = None  # None: unstated, so losing every cloud degrades
    cost_weight: float = 0.0  # MIX objective: see PlanAsk
    request_id: str = ""
    pipelined: bool = False  # speculation drafts the next round while one is in flight
    stop_ids: tuple[int, ...] = ()  # more tokens that end the reply (a chat's tool-call end)


@dataclass(frozen=True)
class Decision:
    """How a request starts."""

    mode: Mode
    k: int  # the plan's draft length; 0: none chosen
    first: Cloud | None  # the cloud to start on; None: whichever the directory picks
    planned: bool  # the coordinator planned it (then plan revisions are asked for)
    pipelined: bool = False  # speculation drafts the next round while one is in flight


class Planner:
    """Decides each request's start and revises it, with the coordinator when there is one."""

    def __init__(self, node_id: str, clouds: CloudDirectory, default_mode: Mode) -> None:
        self.node_id, self.clouds, self.default_mode = node_id, clouds, default_mode

    @staticmethod
    def ask(task: SolveTask, max_new: int | None = None) -> PlanAsk:
        """The plan question for ``task`` (with ``max_new`` tokens still to generate)."""
        return PlanAsk(
            objective=task.objective,
            floor=task.floor,
            cost_weight=task.cost_weight,
            prompt_tokens=len(task.prompt),
            max_new=task.max_new if max_new is None else max_new,
            pipelined=task.pipelined,
            text_drafts=task.params.greedy,  # the edge's speculator offers text drafts then
        )

    async def decide(self, task: SolveTask) -> Decision:
        """The request's own mode, else the coordinator's plan, else this node's default."""
        piped = task.pipelined
        if task.mode is not None:
            return Decision(task.mode, 0, None, False, piped)
        if not self.clouds.has_coordinator:
            return Decision(self.default_mode, 0, None, False, piped)
        plan = await self.clouds.plan_for(self.ask(task))
        if plan is None:  # no coordinator answer: this node's default on a known cloud
            return Decision(self.default_mode, 0, None, False, piped)
        return Decision(plan.mode, plan.k, self._cloud(plan), True, piped or plan.pipelined)

    async def replan(self, task: SolveTask, left: int) -> Replan | None:
        """A fresh plan for the ``left`` tokens of ``task``; None to go on as before."""
        plan = await self.clouds.plan_for(self.ask(task, left), fresh=True)
        if plan is None or plan.mode is Mode.EDGE_ONLY:
            return None
        cloud = self._cloud(plan)
        if cloud is None:
            return None
        return Replan(plan.mode, cloud, plan.k, task.pipelined or plan.pipelined)

    def _cloud(self, plan: Plan) -> Cloud | None:
        if plan.cloud is None:
            return None
        return plan.cloud.node_id, self.clouds.stub(plan.cloud.address)
