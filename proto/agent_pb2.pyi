from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Observation(_message.Message):
    __slots__ = ("obs", "avail_actions", "episode_id")
    OBS_FIELD_NUMBER: _ClassVar[int]
    AVAIL_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    obs: _containers.RepeatedScalarFieldContainer[float]
    avail_actions: _containers.RepeatedScalarFieldContainer[bool]
    episode_id: str
    def __init__(self, obs: _Optional[_Iterable[float]] = ..., avail_actions: _Optional[_Iterable[bool]] = ..., episode_id: _Optional[str] = ...) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("decision_ns", "inference_ns", "batch_size")
    DECISION_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_NS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decision_ns: int
    inference_ns: int
    batch_size: int
    def __init__(self, decision_ns: _Optional[int] = ..., inference_ns: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("action", "scores", "step", "timing")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    action: int
    scores: _containers.RepeatedScalarFieldContainer[float]
    step: int
    timing: ServerTiming
    def __init__(self, action: _Optional[int] = ..., scores: _Optional[_Iterable[float]] = ..., step: _Optional[int] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ...) -> None: ...

class ObservationBatch(_message.Message):
    __slots__ = ("slots", "start", "obs", "avail_actions", "end")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    OBS_FIELD_NUMBER: _ClassVar[int]
    AVAIL_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    start: _containers.RepeatedScalarFieldContainer[bool]
    obs: _containers.RepeatedScalarFieldContainer[float]
    avail_actions: _containers.RepeatedScalarFieldContainer[bool]
    end: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, slots: _Optional[_Iterable[int]] = ..., start: _Optional[_Iterable[bool]] = ..., obs: _Optional[_Iterable[float]] = ..., avail_actions: _Optional[_Iterable[bool]] = ..., end: _Optional[_Iterable[int]] = ...) -> None: ...

class DecisionBatch(_message.Message):
    __slots__ = ("actions", "scores", "codes", "steps", "error", "timing")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    codes: _containers.RepeatedScalarFieldContainer[int]
    steps: _containers.RepeatedScalarFieldContainer[int]
    error: str
    timing: ServerTiming
    def __init__(self, actions: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., codes: _Optional[_Iterable[int]] = ..., steps: _Optional[_Iterable[int]] = ..., error: _Optional[str] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("episode_id", "start", "end", "observation")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    start: bool
    end: bool
    observation: Observation
    def __init__(self, episode_id: _Optional[str] = ..., start: _Optional[bool] = ..., end: _Optional[bool] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ...) -> None: ...

class GetSpecRequest(_message.Message):
    __slots__ = ("episode_id",)
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    def __init__(self, episode_id: _Optional[str] = ...) -> None: ...

class AgentSpec(_message.Message):
    __slots__ = ("agent_index", "n_agents", "obs_dim", "n_actions", "hidden_dim", "algorithm", "kind", "env_id", "model_sha256", "manifest_version", "server_version", "env_steps", "max_episodes", "execution_provider", "model_version", "rollout_attempts", "rollout_refusal")
    AGENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    N_AGENTS_FIELD_NUMBER: _ClassVar[int]
    OBS_DIM_FIELD_NUMBER: _ClassVar[int]
    N_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENV_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_EPISODES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    agent_index: int
    n_agents: int
    obs_dim: int
    n_actions: int
    hidden_dim: int
    algorithm: str
    kind: str
    env_id: str
    model_sha256: str
    manifest_version: int
    server_version: str
    env_steps: int
    max_episodes: int
    execution_provider: str
    model_version: str
    rollout_attempts: int
    rollout_refusal: str
    def __init__(self, agent_index: _Optional[int] = ..., n_agents: _Optional[int] = ..., obs_dim: _Optional[int] = ..., n_actions: _Optional[int] = ..., hidden_dim: _Optional[int] = ..., algorithm: _Optional[str] = ..., kind: _Optional[str] = ..., env_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., manifest_version: _Optional[int] = ..., server_version: _Optional[str] = ..., env_steps: _Optional[int] = ..., max_episodes: _Optional[int] = ..., execution_provider: _Optional[str] = ..., model_version: _Optional[str] = ..., rollout_attempts: _Optional[int] = ..., rollout_refusal: _Optional[str] = ...) -> None: ...
