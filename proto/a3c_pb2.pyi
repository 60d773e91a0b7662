from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT64: _ClassVar[DType]
    INT32: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    INT8: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
BFLOAT16: DType
FLOAT64: DType
INT64: DType
INT32: DType
UINT8: DType
INT8: DType

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data", "scales")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scales: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scales: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("kind", "obs_shape", "num_actions", "center_frames")
    KIND_FIELD_NUMBER: _ClassVar[int]
    OBS_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CENTER_FRAMES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    obs_shape: _containers.RepeatedScalarFieldContainer[int]
    num_actions: int
    center_frames: bool
    def __init__(self, kind: _Optional[str] = ..., obs_shape: _Optional[_Iterable[int]] = ..., num_actions: _Optional[int] = ..., center_frames: _Optional[bool] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("env_id", "model", "t_max", "gamma", "entropy_coef", "value_coef", "max_grad_norm", "clip_rewards", "frames_per_step", "wire_dtype", "max_message_bytes", "max_staleness")
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    T_MAX_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_COEF_FIELD_NUMBER: _ClassVar[int]
    VALUE_COEF_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    CLIP_REWARDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    model: ModelSpec
    t_max: int
    gamma: float
    entropy_coef: float
    value_coef: float
    max_grad_norm: float
    clip_rewards: bool
    frames_per_step: int
    wire_dtype: DType
    max_message_bytes: int
    max_staleness: int
    def __init__(self, env_id: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., t_max: _Optional[int] = ..., gamma: _Optional[float] = ..., entropy_coef: _Optional[float] = ..., value_coef: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., clip_rewards: _Optional[bool] = ..., frames_per_step: _Optional[int] = ..., wire_dtype: _Optional[_Union[DType, str]] = ..., max_message_bytes: _Optional[int] = ..., max_staleness: _Optional[int] = ...) -> None: ...

class GetRunSpecRequest(_message.Message):
    __slots__ = ("actor_id",)
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    def __init__(self, actor_id: _Optional[str] = ...) -> None: ...

class GetParamsRequest(_message.Message):
    __slots__ = ("actor_id", "have_version")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    have_version: int
    def __init__(self, actor_id: _Optional[str] = ..., have_version: _Optional[int] = ...) -> None: ...

class Params(_message.Message):
    __slots__ = ("version", "tensors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class LossStats(_message.Message):
    __slots__ = ("policy_loss", "value_loss", "entropy", "grad_norm")
    POLICY_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALUE_LOSS_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    policy_loss: float
    value_loss: float
    entropy: float
    grad_norm: float
    def __init__(self, policy_loss: _Optional[float] = ..., value_loss: _Optional[float] = ..., entropy: _Optional[float] = ..., grad_norm: _Optional[float] = ...) -> None: ...

class PushGradientsRequest(_message.Message):
    __slots__ = ("actor_id", "seq", "base_version", "gradients", "env_frames", "agent_steps", "episode_returns", "loss", "want_params")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    ENV_FRAMES_FIELD_NUMBER: _ClassVar[int]
    AGENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_RETURNS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    WANT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    seq: int
    base_version: int
    gradients: _containers.RepeatedCompositeFieldContainer[Tensor]
    env_frames: int
    agent_steps: int
    episode_returns: _containers.RepeatedScalarFieldContainer[float]
    loss: LossStats
    want_params: bool
    def __init__(self, actor_id: _Optional[str] = ..., seq: _Optional[int] = ..., base_version: _Optional[int] = ..., gradients: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., env_frames: _Optional[int] = ..., agent_steps: _Optional[int] = ..., episode_returns: _Optional[_Iterable[float]] = ..., loss: _Optional[_Union[LossStats, _Mapping]] = ..., want_params: _Optional[bool] = ...) -> None: ...

class PushGradientsResponse(_message.Message):
    __slots__ = ("version", "params")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    version: int
    params: Params
    def __init__(self, version: _Optional[int] = ..., params: _Optional[_Union[Params, _Mapping]] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("actor_id",)
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    def __init__(self, actor_id: _Optional[str] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("evaluator_id", "version", "episode_returns", "video_gif")
    EVALUATOR_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPISODE_RETURNS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_GIF_FIELD_NUMBER: _ClassVar[int]
    evaluator_id: str
    version: int
    episode_returns: _containers.RepeatedScalarFieldContainer[float]
    video_gif: bytes
    def __init__(self, evaluator_id: _Optional[str] = ..., version: _Optional[int] = ..., episode_returns: _Optional[_Iterable[float]] = ..., video_gif: _Optional[bytes] = ...) -> None: ...

class EvaluationReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
