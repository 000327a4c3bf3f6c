from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_EDGE: _ClassVar[Role]
    ROLE_CLOUD: _ClassVar[Role]

class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_UNSPECIFIED: _ClassVar[Objective]
    OBJECTIVE_LATENCY: _ClassVar[Objective]
    OBJECTIVE_CLOUD_COST: _ClassVar[Objective]
    OBJECTIVE_MIX: _ClassVar[Objective]

class QualityFloor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUALITY_UNSPECIFIED: _ClassVar[QualityFloor]
    QUALITY_TARGET: _ClassVar[QualityFloor]
    QUALITY_ANY: _ClassVar[QualityFloor]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_EDGE_ONLY: _ClassVar[Mode]
    MODE_CLOUD_ONLY: _ClassVar[Mode]
    MODE_TOKEN_SPECULATION: _ClassVar[Mode]
ROLE_UNSPECIFIED: Role
ROLE_EDGE: Role
ROLE_CLOUD: Role
OBJECTIVE_UNSPECIFIED: Objective
OBJECTIVE_LATENCY: Objective
OBJECTIVE_CLOUD_COST: Objective
OBJECTIVE_MIX: Objective
QUALITY_UNSPECIFIED: QualityFloor
QUALITY_TARGET: QualityFloor
QUALITY_ANY: QualityFloor
MODE_UNSPECIFIED: Mode
MODE_EDGE_ONLY: Mode
MODE_CLOUD_ONLY: Mode
MODE_TOKEN_SPECULATION: Mode

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "parameters", "vocab_size", "backend")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters: int
    vocab_size: int
    backend: str
    def __init__(self, name: _Optional[str] = ..., parameters: _Optional[int] = ..., vocab_size: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "role", "address", "models", "device", "memory_bytes", "max_sessions", "telemetry_address", "tokenizer")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: Role
    address: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    device: str
    memory_bytes: int
    max_sessions: int
    telemetry_address: str
    tokenizer: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., address: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., device: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., max_sessions: _Optional[int] = ..., telemetry_address: _Optional[str] = ..., tokenizer: _Optional[str] = ...) -> None: ...

class NodeLoad(_message.Message):
    __slots__ = ("active_sessions", "queue_depth", "busy_fraction", "tokens_per_s")
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BUSY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    active_sessions: int
    queue_depth: int
    busy_fraction: float
    tokens_per_s: float
    def __init__(self, active_sessions: _Optional[int] = ..., queue_depth: _Optional[int] = ..., busy_fraction: _Optional[float] = ..., tokens_per_s: _Optional[float] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: NodeInfo
    def __init__(self, node: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval_s: float
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "load")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    load: NodeLoad
    def __init__(self, node_id: _Optional[str] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class DeregisterReply(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class PickCloudRequest(_message.Message):
    __slots__ = ("edge_id", "model", "exclude", "tokenizer")
    EDGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    edge_id: str
    model: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    tokenizer: str
    def __init__(self, edge_id: _Optional[str] = ..., model: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ..., tokenizer: _Optional[str] = ...) -> None: ...

class PickCloudReply(_message.Message):
    __slots__ = ("cloud",)
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    cloud: NodeInfo
    def __init__(self, cloud: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("edge_id", "objective", "quality_floor", "cost_weight", "prompt_tokens", "max_new_tokens", "exclude", "model", "tokenizer", "pipelined", "allow_pipelined", "text_drafts")
    EDGE_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PIPELINED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    edge_id: str
    objective: Objective
    quality_floor: QualityFloor
    cost_weight: float
    prompt_tokens: int
    max_new_tokens: int
    exclude: _containers.RepeatedScalarFieldContainer[str]
    model: str
    tokenizer: str
    pipelined: bool
    allow_pipelined: bool
    text_drafts: bool
    def __init__(self, edge_id: _Optional[str] = ..., objective: _Optional[_Union[Objective, str]] = ..., quality_floor: _Optional[_Union[QualityFloor, str]] = ..., cost_weight: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., exclude: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., tokenizer: _Optional[str] = ..., pipelined: _Optional[bool] = ..., allow_pipelined: _Optional[bool] = ..., text_drafts: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("mode", "draft_length", "cloud_id", "latency_s", "cloud_cpu_s", "cost", "pipelined")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ID_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    CLOUD_CPU_S_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    draft_length: int
    cloud_id: str
    latency_s: float
    cloud_cpu_s: float
    cost: float
    pipelined: bool
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., draft_length: _Optional[int] = ..., cloud_id: _Optional[str] = ..., latency_s: _Optional[float] = ..., cloud_cpu_s: _Optional[float] = ..., cost: _Optional[float] = ..., pipelined: _Optional[bool] = ...) -> None: ...

class PlanReply(_message.Message):
    __slots__ = ("mode", "draft_length", "cloud", "predicted_latency_s", "predicted_cloud_cpu_s", "reason", "candidates", "pipelined")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLOUD_CPU_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    draft_length: int
    cloud: NodeInfo
    predicted_latency_s: float
    predicted_cloud_cpu_s: float
    reason: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    pipelined: bool
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., draft_length: _Optional[int] = ..., cloud: _Optional[_Union[NodeInfo, _Mapping]] = ..., predicted_latency_s: _Optional[float] = ..., predicted_cloud_cpu_s: _Optional[float] = ..., reason: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., pipelined: _Optional[bool] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id", "prompt", "sampling", "objective", "quality_floor", "cost_weight", "deadline_s", "max_new_tokens", "edge_id", "pipelined", "mode", "k_policy", "draft_length", "chat_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EDGE_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    K_POLICY_FIELD_NUMBER: _ClassVar[int]
    DRAFT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHAT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    prompt: str
    sampling: Sampling
    objective: Objective
    quality_floor: QualityFloor
    cost_weight: float
    deadline_s: float
    max_new_tokens: int
    edge_id: str
    pipelined: bool
    mode: Mode
    k_policy: str
    draft_length: int
    chat_json: str
    def __init__(self, job_id: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., objective: _Optional[_Union[Objective, str]] = ..., quality_floor: _Optional[_Union[QualityFloor, str]] = ..., cost_weight: _Optional[float] = ..., deadline_s: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., edge_id: _Optional[str] = ..., pipelined: _Optional[bool] = ..., mode: _Optional[_Union[Mode, str]] = ..., k_policy: _Optional[str] = ..., draft_length: _Optional[int] = ..., chat_json: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("planned", "progress", "done")
    PLANNED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    planned: PlanReply
    progress: SolveEvent
    done: JobDone
    def __init__(self, planned: _Optional[_Union[PlanReply, _Mapping]] = ..., progress: _Optional[_Union[SolveEvent, _Mapping]] = ..., done: _Optional[_Union[JobDone, _Mapping]] = ...) -> None: ...

class JobDone(_message.Message):
    __slots__ = ("job_id", "edge_id", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    edge_id: str
    result: SolveReply
    def __init__(self, job_id: _Optional[str] = ..., edge_id: _Optional[str] = ..., result: _Optional[_Union[SolveReply, _Mapping]] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("session_id", "prompt", "sampling", "tokenizer", "text_drafts", "prompt_text")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TEXT_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    prompt: _containers.RepeatedScalarFieldContainer[int]
    sampling: Sampling
    tokenizer: str
    text_drafts: bool
    prompt_text: str
    def __init__(self, session_id: _Optional[str] = ..., prompt: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., tokenizer: _Optional[str] = ..., text_drafts: _Optional[bool] = ..., prompt_text: _Optional[str] = ...) -> None: ...

class DraftDist(_message.Message):
    __slots__ = ("ids", "probs")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("session_id", "round_id", "base_position", "draft", "q", "draft_text")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_POSITION_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round_id: int
    base_position: int
    draft: _containers.RepeatedScalarFieldContainer[int]
    q: _containers.RepeatedCompositeFieldContainer[DraftDist]
    draft_text: str
    def __init__(self, session_id: _Optional[str] = ..., round_id: _Optional[int] = ..., base_position: _Optional[int] = ..., draft: _Optional[_Iterable[int]] = ..., q: _Optional[_Iterable[_Union[DraftDist, _Mapping]]] = ..., draft_text: _Optional[str] = ...) -> None: ...

class CloseSession(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SpecRequest(_message.Message):
    __slots__ = ("open", "verify", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    verify: VerifyRequest
    close: CloseSession
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., verify: _Optional[_Union[VerifyRequest, _Mapping]] = ..., close: _Optional[_Union[CloseSession, _Mapping]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "position", "max_draft", "text_drafts")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAFT_FIELD_NUMBER: _ClassVar[int]
    TEXT_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    position: int
    max_draft: int
    text_drafts: bool
    def __init__(self, session_id: _Optional[str] = ..., position: _Optional[int] = ..., max_draft: _Optional[int] = ..., text_drafts: _Optional[bool] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("session_id", "round_id", "base_position", "accepted", "next_token", "position", "model_ms", "model_cpu_s", "batch_size", "text", "drafted", "ended")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CPU_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round_id: int
    base_position: int
    accepted: int
    next_token: int
    position: int
    model_ms: float
    model_cpu_s: float
    batch_size: int
    text: str
    drafted: int
    ended: bool
    def __init__(self, session_id: _Optional[str] = ..., round_id: _Optional[int] = ..., base_position: _Optional[int] = ..., accepted: _Optional[int] = ..., next_token: _Optional[int] = ..., position: _Optional[int] = ..., model_ms: _Optional[float] = ..., model_cpu_s: _Optional[float] = ..., batch_size: _Optional[int] = ..., text: _Optional[str] = ..., drafted: _Optional[int] = ..., ended: _Optional[bool] = ...) -> None: ...

class SessionClosed(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SpecReply(_message.Message):
    __slots__ = ("opened", "verdict", "closed")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    verdict: VerifyReply
    closed: SessionClosed
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., verdict: _Optional[_Union[VerifyReply, _Mapping]] = ..., closed: _Optional[_Union[SessionClosed, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "sampling", "max_new_tokens", "prompt_text", "tokenizer")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    prompt: _containers.RepeatedScalarFieldContainer[int]
    sampling: Sampling
    max_new_tokens: int
    prompt_text: str
    tokenizer: str
    def __init__(self, prompt: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., prompt_text: _Optional[str] = ..., tokenizer: _Optional[str] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("tokens", "model_ms", "model_cpu_s", "text", "ended", "tokenizer")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CPU_S_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    model_ms: float
    model_cpu_s: float
    text: str
    ended: bool
    tokenizer: str
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., model_ms: _Optional[float] = ..., model_cpu_s: _Optional[float] = ..., text: _Optional[str] = ..., ended: _Optional[bool] = ..., tokenizer: _Optional[str] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetricsReply(_message.Message):
    __slots__ = ("node_id", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    values: _containers.ScalarMap[str, float]
    def __init__(self, node_id: _Optional[str] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PartialSolution(_message.Message):
    __slots__ = ("question", "steps")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    question: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, question: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("items", "scorer", "rewrite_below", "rewrite_from", "delimiter")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    REWRITE_BELOW_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FROM_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PartialSolution]
    scorer: str
    rewrite_below: float
    rewrite_from: int
    delimiter: str
    def __init__(self, items: _Optional[_Iterable[_Union[PartialSolution, _Mapping]]] = ..., scorer: _Optional[str] = ..., rewrite_below: _Optional[float] = ..., rewrite_from: _Optional[int] = ..., delimiter: _Optional[str] = ...) -> None: ...

class StepScores(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoreReply(_message.Message):
    __slots__ = ("items", "model_ms", "batch_size", "rewrite", "rewrite_index", "confirmed_steps")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    REWRITE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_STEPS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StepScores]
    model_ms: float
    batch_size: int
    rewrite: StepReply
    rewrite_index: int
    confirmed_steps: int
    def __init__(self, items: _Optional[_Iterable[_Union[StepScores, _Mapping]]] = ..., model_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., rewrite: _Optional[_Union[StepReply, _Mapping]] = ..., rewrite_index: _Optional[int] = ..., confirmed_steps: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("prefix", "sampling", "max_tokens", "delimiter", "draft")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    prefix: PartialSolution
    sampling: Sampling
    max_tokens: int
    delimiter: str
    draft: str
    def __init__(self, prefix: _Optional[_Union[PartialSolution, _Mapping]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_tokens: _Optional[int] = ..., delimiter: _Optional[str] = ..., draft: _Optional[str] = ...) -> None: ...

class StepDraftMsg(_message.Message):
    __slots__ = ("text", "tokens", "complete", "ended")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: int
    complete: bool
    ended: bool
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[int] = ..., complete: _Optional[bool] = ..., ended: _Optional[bool] = ...) -> None: ...

class StepReply(_message.Message):
    __slots__ = ("step", "model_ms", "draft_accepted")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    step: StepDraftMsg
    model_ms: float
    draft_accepted: int
    def __init__(self, step: _Optional[_Union[StepDraftMsg, _Mapping]] = ..., model_ms: _Optional[float] = ..., draft_accepted: _Optional[int] = ...) -> None: ...

class SolveRequest(_message.Message):
    __slots__ = ("request_id", "prompt", "sampling", "mode", "max_new_tokens", "draft_length", "k_policy", "objective", "quality_floor", "cost_weight", "pipelined", "chat_json")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    K_POLICY_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    CHAT_JSON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    sampling: Sampling
    mode: Mode
    max_new_tokens: int
    draft_length: int
    k_policy: str
    objective: Objective
    quality_floor: QualityFloor
    cost_weight: float
    pipelined: bool
    chat_json: str
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., mode: _Optional[_Union[Mode, str]] = ..., max_new_tokens: _Optional[int] = ..., draft_length: _Optional[int] = ..., k_policy: _Optional[str] = ..., objective: _Optional[_Union[Objective, str]] = ..., quality_floor: _Optional[_Union[QualityFloor, str]] = ..., cost_weight: _Optional[float] = ..., pipelined: _Optional[bool] = ..., chat_json: _Optional[str] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("generated_tokens", "drafted_tokens", "accepted_tokens", "verify_rounds", "wall_s", "cloud_model_cpu_s", "edge_model_s", "bytes_sent", "bytes_received", "ttft_s", "ahead_rounds", "pipelined_rounds", "wasted_draft_tokens", "prompt_tokens")
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MODEL_CPU_S_FIELD_NUMBER: _ClassVar[int]
    EDGE_MODEL_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    AHEAD_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    WASTED_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    generated_tokens: int
    drafted_tokens: int
    accepted_tokens: int
    verify_rounds: int
    wall_s: float
    cloud_model_cpu_s: float
    edge_model_s: float
    bytes_sent: int
    bytes_received: int
    ttft_s: float
    ahead_rounds: int
    pipelined_rounds: int
    wasted_draft_tokens: int
    prompt_tokens: int
    def __init__(self, generated_tokens: _Optional[int] = ..., drafted_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., verify_rounds: _Optional[int] = ..., wall_s: _Optional[float] = ..., cloud_model_cpu_s: _Optional[float] = ..., edge_model_s: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., ttft_s: _Optional[float] = ..., ahead_rounds: _Optional[int] = ..., pipelined_rounds: _Optional[int] = ..., wasted_draft_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class SolveReply(_message.Message):
    __slots__ = ("request_id", "text", "tokens", "mode", "degraded", "cloud_node", "account", "note")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    CLOUD_NODE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    mode: Mode
    degraded: bool
    cloud_node: str
    account: Account
    note: str
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ..., mode: _Optional[_Union[Mode, str]] = ..., degraded: _Optional[bool] = ..., cloud_node: _Optional[str] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class SolveEvent(_message.Message):
    __slots__ = ("tokens", "text", "mode", "done", "chat_template")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    text: str
    mode: Mode
    done: SolveReply
    chat_template: str
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., done: _Optional[_Union[SolveReply, _Mapping]] = ..., chat_template: _Optional[str] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("question", "prefixes", "n", "temperature", "seed", "max_tokens", "delimiter")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    question: str
    prefixes: _containers.RepeatedCompositeFieldContainer[PartialSolution]
    n: int
    temperature: float
    seed: int
    max_tokens: int
    delimiter: str
    def __init__(self, question: _Optional[str] = ..., prefixes: _Optional[_Iterable[_Union[PartialSolution, _Mapping]]] = ..., n: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., delimiter: _Optional[str] = ...) -> None: ...

class Candidates(_message.Message):
    __slots__ = ("drafts",)
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    drafts: _containers.RepeatedCompositeFieldContainer[StepDraftMsg]
    def __init__(self, drafts: _Optional[_Iterable[_Union[StepDraftMsg, _Mapping]]] = ...) -> None: ...

class ProposeReply(_message.Message):
    __slots__ = ("per_prefix", "model_ms")
    PER_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    per_prefix: _containers.RepeatedCompositeFieldContainer[Candidates]
    model_ms: float
    def __init__(self, per_prefix: _Optional[_Iterable[_Union[Candidates, _Mapping]]] = ..., model_ms: _Optional[float] = ...) -> None: ...

class ReasonRequest(_message.Message):
    __slots__ = ("request_id", "question", "strategy", "n", "m", "threshold", "first_cloud_steps", "token_budget", "score_budget", "seed", "token_speculation", "lookahead", "separate_rewrite", "delimiter")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FIRST_CLOUD_STEPS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCORE_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SPECULATION_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    SEPARATE_REWRITE_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    question: str
    strategy: str
    n: int
    m: int
    threshold: float
    first_cloud_steps: int
    token_budget: int
    score_budget: int
    seed: int
    token_speculation: bool
    lookahead: int
    separate_rewrite: bool
    delimiter: str
    def __init__(self, request_id: _Optional[str] = ..., question: _Optional[str] = ..., strategy: _Optional[str] = ..., n: _Optional[int] = ..., m: _Optional[int] = ..., threshold: _Optional[float] = ..., first_cloud_steps: _Optional[int] = ..., token_budget: _Optional[int] = ..., score_budget: _Optional[int] = ..., seed: _Optional[int] = ..., token_speculation: _Optional[bool] = ..., lookahead: _Optional[int] = ..., separate_rewrite: _Optional[bool] = ..., delimiter: _Optional[str] = ...) -> None: ...

class ReasonAccount(_message.Message):
    __slots__ = ("drafted_tokens", "drafted_steps", "accepted_steps", "scorer_calls", "cloud_tokens", "bytes_sent", "bytes_received", "wall_s", "cloud_draft_tokens", "confirmed_steps")
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_STEPS_FIELD_NUMBER: _ClassVar[int]
    SCORER_CALLS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    CLOUD_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_STEPS_FIELD_NUMBER: _ClassVar[int]
    drafted_tokens: int
    drafted_steps: int
    accepted_steps: int
    scorer_calls: int
    cloud_tokens: int
    bytes_sent: int
    bytes_received: int
    wall_s: float
    cloud_draft_tokens: int
    confirmed_steps: int
    def __init__(self, drafted_tokens: _Optional[int] = ..., drafted_steps: _Optional[int] = ..., accepted_steps: _Optional[int] = ..., scorer_calls: _Optional[int] = ..., cloud_tokens: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., wall_s: _Optional[float] = ..., cloud_draft_tokens: _Optional[int] = ..., confirmed_steps: _Optional[int] = ...) -> None: ...

class ReasonReply(_message.Message):
    __slots__ = ("request_id", "answer", "steps", "text", "account")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    answer: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    text: str
    account: ReasonAccount
    def __init__(self, request_id: _Optional[str] = ..., answer: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., account: _Optional[_Union[ReasonAccount, _Mapping]] = ...) -> None: ...

class ExpertId(_message.Message):
    __slots__ = ("layer", "expert")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    layer: int
    expert: int
    def __init__(self, layer: _Optional[int] = ..., expert: _Optional[int] = ...) -> None: ...

class ExpertManifestRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExpertManifest(_message.Message):
    __slots__ = ("model", "layout", "n_layers", "n_experts", "d_model", "expert_bytes", "max_chunk_bytes", "max_rows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPERT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    model: str
    layout: str
    n_layers: int
    n_experts: int
    d_model: int
    expert_bytes: int
    max_chunk_bytes: int
    max_rows: int
    def __init__(self, model: _Optional[str] = ..., layout: _Optional[str] = ..., n_layers: _Optional[int] = ..., n_experts: _Optional[int] = ..., d_model: _Optional[int] = ..., expert_bytes: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., max_rows: _Optional[int] = ...) -> None: ...

class FetchExpertRequest(_message.Message):
    __slots__ = ("id", "int8")
    ID_FIELD_NUMBER: _ClassVar[int]
    INT8_FIELD_NUMBER: _ClassVar[int]
    id: ExpertId
    int8: bool
    def __init__(self, id: _Optional[_Union[ExpertId, _Mapping]] = ..., int8: _Optional[bool] = ...) -> None: ...

class ExpertChunk(_message.Message):
    __slots__ = ("part", "dtype", "shape", "offset", "total_bytes", "data")
    PART_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    part: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    total_bytes: int
    data: bytes
    def __init__(self, part: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExpertRowsMsg(_message.Message):
    __slots__ = ("expert", "rows", "data")
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    expert: int
    rows: int
    data: bytes
    def __init__(self, expert: _Optional[int] = ..., rows: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ComputeExpertsRequest(_message.Message):
    __slots__ = ("layer", "inputs")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    inputs: _containers.RepeatedCompositeFieldContainer[ExpertRowsMsg]
    def __init__(self, layer: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[ExpertRowsMsg, _Mapping]]] = ...) -> None: ...

class ComputeExpertsReply(_message.Message):
    __slots__ = ("outputs", "compute_ms")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[ExpertRowsMsg]
    compute_ms: float
    def __init__(self, outputs: _Optional[_Iterable[_Union[ExpertRowsMsg, _Mapping]]] = ..., compute_ms: _Optional[float] = ...) -> None: ...
