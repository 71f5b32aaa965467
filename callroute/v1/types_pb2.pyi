from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdminState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADMIN_STATE_UNSPECIFIED: _ClassVar[AdminState]
    ADMIN_STATE_OPEN: _ClassVar[AdminState]
    ADMIN_STATE_DRAINING: _ClassVar[AdminState]
    ADMIN_STATE_CLOSED: _ClassVar[AdminState]

class CenterStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CENTER_STATUS_UNSPECIFIED: _ClassVar[CenterStatus]
    CENTER_STATUS_HEALTHY: _ClassVar[CenterStatus]
    CENTER_STATUS_STALE: _ClassVar[CenterStatus]
    CENTER_STATUS_DOWN: _ClassVar[CenterStatus]
    CENTER_STATUS_FAILING: _ClassVar[CenterStatus]
    CENTER_STATUS_UNKNOWN: _ClassVar[CenterStatus]

class OverloadAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERLOAD_ACTION_NONE: _ClassVar[OverloadAction]
    OVERLOAD_ACTION_ANNOUNCEMENT: _ClassVar[OverloadAction]
    OVERLOAD_ACTION_CALLBACK: _ClassVar[OverloadAction]

class TreatmentAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TREATMENT_ACTION_NONE: _ClassVar[TreatmentAction]
    TREATMENT_ACTION_CALLBACK_OFFER: _ClassVar[TreatmentAction]
    TREATMENT_ACTION_ANNOUNCEMENT: _ClassVar[TreatmentAction]
    TREATMENT_ACTION_CHANNEL_GUIDANCE: _ClassVar[TreatmentAction]

class RouteKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_KIND_UNSPECIFIED: _ClassVar[RouteKind]
    ROUTE_KIND_HOME: _ClassVar[RouteKind]
    ROUTE_KIND_OVERFLOW: _ClassVar[RouteKind]
    ROUTE_KIND_DR: _ClassVar[RouteKind]
    ROUTE_KIND_PINNED: _ClassVar[RouteKind]
    ROUTE_KIND_OVERLOAD: _ClassVar[RouteKind]
ADMIN_STATE_UNSPECIFIED: AdminState
ADMIN_STATE_OPEN: AdminState
ADMIN_STATE_DRAINING: AdminState
ADMIN_STATE_CLOSED: AdminState
CENTER_STATUS_UNSPECIFIED: CenterStatus
CENTER_STATUS_HEALTHY: CenterStatus
CENTER_STATUS_STALE: CenterStatus
CENTER_STATUS_DOWN: CenterStatus
CENTER_STATUS_FAILING: CenterStatus
CENTER_STATUS_UNKNOWN: CenterStatus
OVERLOAD_ACTION_NONE: OverloadAction
OVERLOAD_ACTION_ANNOUNCEMENT: OverloadAction
OVERLOAD_ACTION_CALLBACK: OverloadAction
TREATMENT_ACTION_NONE: TreatmentAction
TREATMENT_ACTION_CALLBACK_OFFER: TreatmentAction
TREATMENT_ACTION_ANNOUNCEMENT: TreatmentAction
TREATMENT_ACTION_CHANNEL_GUIDANCE: TreatmentAction
ROUTE_KIND_UNSPECIFIED: RouteKind
ROUTE_KIND_HOME: RouteKind
ROUTE_KIND_OVERFLOW: RouteKind
ROUTE_KIND_DR: RouteKind
ROUTE_KIND_PINNED: RouteKind
ROUTE_KIND_OVERLOAD: RouteKind

class Treatment(_message.Message):
    __slots__ = ("action", "prompt", "predicted_wait_s", "threshold_s", "source")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_S_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    action: TreatmentAction
    prompt: str
    predicted_wait_s: float
    threshold_s: float
    source: str
    def __init__(self, action: _Optional[_Union[TreatmentAction, str]] = ..., prompt: _Optional[str] = ..., predicted_wait_s: _Optional[float] = ..., threshold_s: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("center", "weight")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    center: str
    weight: float
    def __init__(self, center: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("branch", "skill", "targets", "kind", "vip_targets", "overload_action", "explanation", "home", "treatment")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VIP_TARGETS_FIELD_NUMBER: _ClassVar[int]
    OVERLOAD_ACTION_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    kind: RouteKind
    vip_targets: _containers.RepeatedCompositeFieldContainer[Target]
    overload_action: OverloadAction
    explanation: str
    home: str
    treatment: Treatment
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., kind: _Optional[_Union[RouteKind, str]] = ..., vip_targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., overload_action: _Optional[_Union[OverloadAction, str]] = ..., explanation: _Optional[str] = ..., home: _Optional[str] = ..., treatment: _Optional[_Union[Treatment, _Mapping]] = ...) -> None: ...

class ReceiverPrediction(_message.Message):
    __slots__ = ("agents", "load_erlangs", "service_level", "occupancy", "backlog_erlangs", "aht_s")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERLANGS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    OCCUPANCY_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_ERLANGS_FIELD_NUMBER: _ClassVar[int]
    AHT_S_FIELD_NUMBER: _ClassVar[int]
    agents: int
    load_erlangs: float
    service_level: float
    occupancy: float
    backlog_erlangs: float
    aht_s: float
    def __init__(self, agents: _Optional[int] = ..., load_erlangs: _Optional[float] = ..., service_level: _Optional[float] = ..., occupancy: _Optional[float] = ..., backlog_erlangs: _Optional[float] = ..., aht_s: _Optional[float] = ...) -> None: ...

class CenterPrediction(_message.Message):
    __slots__ = ("skills",)
    class SkillsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ReceiverPrediction
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ReceiverPrediction, _Mapping]] = ...) -> None: ...
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    skills: _containers.MessageMap[str, ReceiverPrediction]
    def __init__(self, skills: _Optional[_Mapping[str, ReceiverPrediction]] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("version", "routes", "receivers", "feasible", "infeasible_reasons", "closed", "created_at", "topology_hash", "meta", "topology_version", "topology_json")
    class ReceiversEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: CenterPrediction
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[CenterPrediction, _Mapping]] = ...) -> None: ...
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVERS_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    INFEASIBLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_HASH_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    receivers: _containers.MessageMap[str, CenterPrediction]
    feasible: bool
    infeasible_reasons: _containers.RepeatedScalarFieldContainer[str]
    closed: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    topology_hash: str
    meta: _containers.ScalarMap[str, str]
    topology_version: int
    topology_json: str
    def __init__(self, version: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., receivers: _Optional[_Mapping[str, CenterPrediction]] = ..., feasible: _Optional[bool] = ..., infeasible_reasons: _Optional[_Iterable[str]] = ..., closed: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ..., topology_hash: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ..., topology_version: _Optional[int] = ..., topology_json: _Optional[str] = ...) -> None: ...
