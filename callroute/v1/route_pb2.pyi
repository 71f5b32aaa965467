from callroute.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteRequest(_message.Message):
    __slots__ = ("branch", "skill", "caller", "tier")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    caller: str
    tier: str
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., caller: _Optional[str] = ..., tier: _Optional[str] = ...) -> None: ...

class RouteReply(_message.Message):
    __slots__ = ("center", "fallbacks", "plan_version", "reason", "overload_action", "error", "treatment", "priority")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OVERLOAD_ACTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    center: str
    fallbacks: _containers.RepeatedScalarFieldContainer[str]
    plan_version: int
    reason: str
    overload_action: _types_pb2.OverloadAction
    error: str
    treatment: _types_pb2.Treatment
    priority: int
    def __init__(self, center: _Optional[str] = ..., fallbacks: _Optional[_Iterable[str]] = ..., plan_version: _Optional[int] = ..., reason: _Optional[str] = ..., overload_action: _Optional[_Union[_types_pb2.OverloadAction, str]] = ..., error: _Optional[str] = ..., treatment: _Optional[_Union[_types_pb2.Treatment, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class RouteBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RouteRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RouteRequest, _Mapping]]] = ...) -> None: ...

class RouteBatchReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[RouteReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[RouteReply, _Mapping]]] = ...) -> None: ...

class RequeryRequest(_message.Message):
    __slots__ = ("call_id", "branch", "skill", "waited_s", "tried", "count", "caller", "tier", "refused")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    WAITED_S_FIELD_NUMBER: _ClassVar[int]
    TRIED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    branch: str
    skill: str
    waited_s: float
    tried: _containers.RepeatedScalarFieldContainer[str]
    count: int
    caller: str
    tier: str
    refused: bool
    def __init__(self, call_id: _Optional[str] = ..., branch: _Optional[str] = ..., skill: _Optional[str] = ..., waited_s: _Optional[float] = ..., tried: _Optional[_Iterable[str]] = ..., count: _Optional[int] = ..., caller: _Optional[str] = ..., tier: _Optional[str] = ..., refused: _Optional[bool] = ...) -> None: ...

class RequeryReply(_message.Message):
    __slots__ = ("center", "stay", "reason", "plan_version", "count", "left", "offers", "again_s", "priority")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    STAY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    AGAIN_S_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    center: str
    stay: bool
    reason: str
    plan_version: int
    count: int
    left: int
    offers: _containers.RepeatedScalarFieldContainer[str]
    again_s: float
    priority: int
    def __init__(self, center: _Optional[str] = ..., stay: _Optional[bool] = ..., reason: _Optional[str] = ..., plan_version: _Optional[int] = ..., count: _Optional[int] = ..., left: _Optional[int] = ..., offers: _Optional[_Iterable[str]] = ..., again_s: _Optional[float] = ..., priority: _Optional[int] = ...) -> None: ...

class LookAheadRequest(_message.Message):
    __slots__ = ("call_id", "skill")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    skill: str
    def __init__(self, call_id: _Optional[str] = ..., skill: _Optional[str] = ...) -> None: ...

class LookAheadReply(_message.Message):
    __slots__ = ("accept", "reason", "free")
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    accept: bool
    reason: str
    free: int
    def __init__(self, accept: _Optional[bool] = ..., reason: _Optional[str] = ..., free: _Optional[int] = ...) -> None: ...
