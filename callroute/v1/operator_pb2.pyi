from callroute.v1 import route_pb2 as _route_pb2
from callroute.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChangeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_STATUS_UNSPECIFIED: _ClassVar[ChangeStatus]
    CHANGE_STATUS_APPLIED: _ClassVar[ChangeStatus]
    CHANGE_STATUS_PENDING_APPROVAL: _ClassVar[ChangeStatus]

class DrillMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRILL_MODE_UNSPECIFIED: _ClassVar[DrillMode]
    DRILL_MODE_DRY_RUN: _ClassVar[DrillMode]
    DRILL_MODE_LIVE: _ClassVar[DrillMode]

class DrillState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRILL_STATE_UNSPECIFIED: _ClassVar[DrillState]
    DRILL_STATE_PENDING_APPROVAL: _ClassVar[DrillState]
    DRILL_STATE_RUNNING: _ClassVar[DrillState]
    DRILL_STATE_HELD: _ClassVar[DrillState]
    DRILL_STATE_ROLLED_BACK: _ClassVar[DrillState]
    DRILL_STATE_DONE: _ClassVar[DrillState]
    DRILL_STATE_ABORTED: _ClassVar[DrillState]
CHANGE_STATUS_UNSPECIFIED: ChangeStatus
CHANGE_STATUS_APPLIED: ChangeStatus
CHANGE_STATUS_PENDING_APPROVAL: ChangeStatus
DRILL_MODE_UNSPECIFIED: DrillMode
DRILL_MODE_DRY_RUN: DrillMode
DRILL_MODE_LIVE: DrillMode
DRILL_STATE_UNSPECIFIED: DrillState
DRILL_STATE_PENDING_APPROVAL: DrillState
DRILL_STATE_RUNNING: DrillState
DRILL_STATE_HELD: DrillState
DRILL_STATE_ROLLED_BACK: DrillState
DRILL_STATE_DONE: DrillState
DRILL_STATE_ABORTED: DrillState

class ListCentersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCentersReply(_message.Message):
    __slots__ = ("centers", "plan_version")
    CENTERS_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    centers: _containers.RepeatedCompositeFieldContainer[CenterInfo]
    plan_version: int
    def __init__(self, centers: _Optional[_Iterable[_Union[CenterInfo, _Mapping]]] = ..., plan_version: _Optional[int] = ...) -> None: ...

class CenterInfo(_message.Message):
    __slots__ = ("center", "region", "status", "weight", "admin_state", "reported_state", "reason", "last_report_age_s", "broken_paths", "skills", "acked_version", "nacked_version", "nack_error")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_STATE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    BROKEN_PATHS_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    NACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    NACK_ERROR_FIELD_NUMBER: _ClassVar[int]
    center: str
    region: str
    status: _types_pb2.CenterStatus
    weight: float
    admin_state: _types_pb2.AdminState
    reported_state: _types_pb2.AdminState
    reason: str
    last_report_age_s: float
    broken_paths: _containers.RepeatedScalarFieldContainer[str]
    skills: _containers.RepeatedCompositeFieldContainer[SkillStatus]
    acked_version: int
    nacked_version: int
    nack_error: str
    def __init__(self, center: _Optional[str] = ..., region: _Optional[str] = ..., status: _Optional[_Union[_types_pb2.CenterStatus, str]] = ..., weight: _Optional[float] = ..., admin_state: _Optional[_Union[_types_pb2.AdminState, str]] = ..., reported_state: _Optional[_Union[_types_pb2.AdminState, str]] = ..., reason: _Optional[str] = ..., last_report_age_s: _Optional[float] = ..., broken_paths: _Optional[_Iterable[str]] = ..., skills: _Optional[_Iterable[_Union[SkillStatus, _Mapping]]] = ..., acked_version: _Optional[int] = ..., nacked_version: _Optional[int] = ..., nack_error: _Optional[str] = ...) -> None: ...

class SkillStatus(_message.Message):
    __slots__ = ("skill", "logged_in", "ready", "busy", "queued", "ewt_s", "service_level", "predicted_service_level", "oldest_wait_s")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    LOGGED_IN_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    EWT_S_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    skill: str
    logged_in: int
    ready: int
    busy: int
    queued: int
    ewt_s: float
    service_level: float
    predicted_service_level: float
    oldest_wait_s: float
    def __init__(self, skill: _Optional[str] = ..., logged_in: _Optional[int] = ..., ready: _Optional[int] = ..., busy: _Optional[int] = ..., queued: _Optional[int] = ..., ewt_s: _Optional[float] = ..., service_level: _Optional[float] = ..., predicted_service_level: _Optional[float] = ..., oldest_wait_s: _Optional[float] = ...) -> None: ...

class SetCenterStateRequest(_message.Message):
    __slots__ = ("center", "state", "reason", "operator", "request_id")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    center: str
    state: _types_pb2.AdminState
    reason: str
    operator: str
    request_id: str
    def __init__(self, center: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.AdminState, str]] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetCenterStateReply(_message.Message):
    __slots__ = ("status", "audit_id", "request_id", "plan_version", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    audit_id: str
    request_id: str
    plan_version: int
    message: str
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., audit_id: _Optional[str] = ..., request_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("request_id", "approver")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    approver: str
    def __init__(self, request_id: _Optional[str] = ..., approver: _Optional[str] = ...) -> None: ...

class ApproveReply(_message.Message):
    __slots__ = ("status", "audit_id", "plan_version", "message", "drill_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DRILL_ID_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    audit_id: str
    plan_version: int
    message: str
    drill_id: str
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., audit_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., message: _Optional[str] = ..., drill_id: _Optional[str] = ...) -> None: ...

class ListPendingRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPendingReply(_message.Message):
    __slots__ = ("pending", "next_page_token")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pending: _containers.RepeatedCompositeFieldContainer[PendingChange]
    next_page_token: str
    def __init__(self, pending: _Optional[_Iterable[_Union[PendingChange, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PendingChange(_message.Message):
    __slots__ = ("request_id", "action", "center", "state", "drill", "reason", "operator", "requested_at", "expires_at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action: str
    center: str
    state: _types_pb2.AdminState
    drill: DrillSpec
    reason: str
    operator: str
    requested_at: float
    expires_at: float
    def __init__(self, request_id: _Optional[str] = ..., action: _Optional[str] = ..., center: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.AdminState, str]] = ..., drill: _Optional[_Union[DrillSpec, _Mapping]] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., requested_at: _Optional[float] = ..., expires_at: _Optional[float] = ...) -> None: ...

class DrillSpec(_message.Message):
    __slots__ = ("center", "mode", "ramp_percents", "step_s", "duration_s", "abort_if_sl_below")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RAMP_PERCENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    ABORT_IF_SL_BELOW_FIELD_NUMBER: _ClassVar[int]
    center: str
    mode: DrillMode
    ramp_percents: _containers.RepeatedScalarFieldContainer[float]
    step_s: float
    duration_s: float
    abort_if_sl_below: float
    def __init__(self, center: _Optional[str] = ..., mode: _Optional[_Union[DrillMode, str]] = ..., ramp_percents: _Optional[_Iterable[float]] = ..., step_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., abort_if_sl_below: _Optional[float] = ...) -> None: ...

class StartDrillRequest(_message.Message):
    __slots__ = ("spec", "reason", "operator", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: DrillSpec
    reason: str
    operator: str
    request_id: str
    def __init__(self, spec: _Optional[_Union[DrillSpec, _Mapping]] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartDrillReply(_message.Message):
    __slots__ = ("status", "drill_id", "audit_id", "request_id", "drill")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRILL_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    drill_id: str
    audit_id: str
    request_id: str
    drill: Drill
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., drill_id: _Optional[str] = ..., audit_id: _Optional[str] = ..., request_id: _Optional[str] = ..., drill: _Optional[_Union[Drill, _Mapping]] = ...) -> None: ...

class DrillStatusRequest(_message.Message):
    __slots__ = ("drill_id",)
    DRILL_ID_FIELD_NUMBER: _ClassVar[int]
    drill_id: str
    def __init__(self, drill_id: _Optional[str] = ...) -> None: ...

class DrillStatusReply(_message.Message):
    __slots__ = ("drill",)
    DRILL_FIELD_NUMBER: _ClassVar[int]
    drill: Drill
    def __init__(self, drill: _Optional[_Union[Drill, _Mapping]] = ...) -> None: ...

class AbortDrillRequest(_message.Message):
    __slots__ = ("drill_id", "reason", "operator", "request_id")
    DRILL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    drill_id: str
    reason: str
    operator: str
    request_id: str
    def __init__(self, drill_id: _Optional[str] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AbortDrillReply(_message.Message):
    __slots__ = ("drill", "audit_id")
    DRILL_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    drill: Drill
    audit_id: str
    def __init__(self, drill: _Optional[_Union[Drill, _Mapping]] = ..., audit_id: _Optional[str] = ...) -> None: ...

class Drill(_message.Message):
    __slots__ = ("drill_id", "spec", "state", "steps", "current_share", "receiver_service_level", "predicted_service_level", "reason", "started_at", "ended_at", "report_path", "plan_version", "operator", "approver")
    class ReceiverServiceLevelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PredictedServiceLevelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DRILL_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SHARE_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    REPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    drill_id: str
    spec: DrillSpec
    state: DrillState
    steps: _containers.RepeatedCompositeFieldContainer[DrillStep]
    current_share: float
    receiver_service_level: _containers.ScalarMap[str, float]
    predicted_service_level: _containers.ScalarMap[str, float]
    reason: str
    started_at: float
    ended_at: float
    report_path: str
    plan_version: int
    operator: str
    approver: str
    def __init__(self, drill_id: _Optional[str] = ..., spec: _Optional[_Union[DrillSpec, _Mapping]] = ..., state: _Optional[_Union[DrillState, str]] = ..., steps: _Optional[_Iterable[_Union[DrillStep, _Mapping]]] = ..., current_share: _Optional[float] = ..., receiver_service_level: _Optional[_Mapping[str, float]] = ..., predicted_service_level: _Optional[_Mapping[str, float]] = ..., reason: _Optional[str] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., report_path: _Optional[str] = ..., plan_version: _Optional[int] = ..., operator: _Optional[str] = ..., approver: _Optional[str] = ...) -> None: ...

class DrillStep(_message.Message):
    __slots__ = ("share", "started_at", "ended_at", "min_service_level", "plan_version", "note")
    SHARE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    MIN_SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    share: float
    started_at: float
    ended_at: float
    min_service_level: float
    plan_version: int
    note: str
    def __init__(self, share: _Optional[float] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., min_service_level: _Optional[float] = ..., plan_version: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class ShowPlanRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ShowPlanReply(_message.Message):
    __slots__ = ("plan", "acks")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    plan: _types_pb2.Plan
    acks: _containers.RepeatedCompositeFieldContainer[CenterAck]
    def __init__(self, plan: _Optional[_Union[_types_pb2.Plan, _Mapping]] = ..., acks: _Optional[_Iterable[_Union[CenterAck, _Mapping]]] = ...) -> None: ...

class CenterAck(_message.Message):
    __slots__ = ("center", "version", "ack", "error", "at")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    center: str
    version: int
    ack: bool
    error: str
    at: float
    def __init__(self, center: _Optional[str] = ..., version: _Optional[int] = ..., ack: _Optional[bool] = ..., error: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class DiffPlansRequest(_message.Message):
    __slots__ = ("from_version", "to_version")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    from_version: int
    to_version: int
    def __init__(self, from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class DiffPlansReply(_message.Message):
    __slots__ = ("from_version", "to_version", "changes")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    from_version: int
    to_version: int
    changes: _containers.RepeatedCompositeFieldContainer[RouteChange]
    def __init__(self, from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., changes: _Optional[_Iterable[_Union[RouteChange, _Mapping]]] = ...) -> None: ...

class RouteChange(_message.Message):
    __slots__ = ("branch", "skill", "before", "after", "kind_before", "kind_after")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    KIND_BEFORE_FIELD_NUMBER: _ClassVar[int]
    KIND_AFTER_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    before: _containers.RepeatedCompositeFieldContainer[_types_pb2.Target]
    after: _containers.RepeatedCompositeFieldContainer[_types_pb2.Target]
    kind_before: _types_pb2.RouteKind
    kind_after: _types_pb2.RouteKind
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., before: _Optional[_Iterable[_Union[_types_pb2.Target, _Mapping]]] = ..., after: _Optional[_Iterable[_Union[_types_pb2.Target, _Mapping]]] = ..., kind_before: _Optional[_Union[_types_pb2.RouteKind, str]] = ..., kind_after: _Optional[_Union[_types_pb2.RouteKind, str]] = ...) -> None: ...

class PlanHistoryRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class PlanHistoryReply(_message.Message):
    __slots__ = ("plans",)
    PLANS_FIELD_NUMBER: _ClassVar[int]
    plans: _containers.RepeatedCompositeFieldContainer[PlanSummary]
    def __init__(self, plans: _Optional[_Iterable[_Union[PlanSummary, _Mapping]]] = ...) -> None: ...

class PlanSummary(_message.Message):
    __slots__ = ("version", "created_at", "feasible", "closed", "routes_by_kind", "topology_hash", "cause")
    class RoutesByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    ROUTES_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_HASH_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    version: int
    created_at: float
    feasible: bool
    closed: _containers.RepeatedScalarFieldContainer[str]
    routes_by_kind: _containers.ScalarMap[str, int]
    topology_hash: str
    cause: str
    def __init__(self, version: _Optional[int] = ..., created_at: _Optional[float] = ..., feasible: _Optional[bool] = ..., closed: _Optional[_Iterable[str]] = ..., routes_by_kind: _Optional[_Mapping[str, int]] = ..., topology_hash: _Optional[str] = ..., cause: _Optional[str] = ...) -> None: ...

class RollbackPlanRequest(_message.Message):
    __slots__ = ("to_version", "reason", "operator", "request_id")
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    to_version: int
    reason: str
    operator: str
    request_id: str
    def __init__(self, to_version: _Optional[int] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RollbackPlanReply(_message.Message):
    __slots__ = ("status", "plan_version", "audit_id", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    plan_version: int
    audit_id: str
    message: str
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., plan_version: _Optional[int] = ..., audit_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("branch", "skill", "caller", "tier", "version", "at")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    caller: str
    tier: str
    version: int
    at: float
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., caller: _Optional[str] = ..., tier: _Optional[str] = ..., version: _Optional[int] = ..., at: _Optional[float] = ...) -> None: ...

class ExplainReply(_message.Message):
    __slots__ = ("decision", "route", "text", "plan_version", "plan_created_at", "inputs")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAN_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    decision: _route_pb2.RouteReply
    route: _types_pb2.Route
    text: str
    plan_version: int
    plan_created_at: float
    inputs: _containers.ScalarMap[str, str]
    def __init__(self, decision: _Optional[_Union[_route_pb2.RouteReply, _Mapping]] = ..., route: _Optional[_Union[_types_pb2.Route, _Mapping]] = ..., text: _Optional[str] = ..., plan_version: _Optional[int] = ..., plan_created_at: _Optional[float] = ..., inputs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("since", "limit", "page_size", "page_token")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    since: float
    limit: int
    page_size: int
    page_token: str
    def __init__(self, since: _Optional[float] = ..., limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditReply(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "operator", "action", "target", "reason", "result", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    at: float
    operator: str
    action: str
    target: str
    reason: str
    result: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., at: _Optional[float] = ..., operator: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ..., result: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class OverrideSpec(_message.Message):
    __slots__ = ("id", "branch", "skill", "center", "share", "to", "ttl_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    branch: str
    skill: str
    center: str
    share: float
    to: _containers.RepeatedScalarFieldContainer[str]
    ttl_s: float
    def __init__(self, id: _Optional[str] = ..., branch: _Optional[str] = ..., skill: _Optional[str] = ..., center: _Optional[str] = ..., share: _Optional[float] = ..., to: _Optional[_Iterable[str]] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class SetOverrideRequest(_message.Message):
    __slots__ = ("override", "operator", "reason", "request_id", "force", "dry_run")
    OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    override: OverrideSpec
    operator: str
    reason: str
    request_id: str
    force: bool
    dry_run: bool
    def __init__(self, override: _Optional[_Union[OverrideSpec, _Mapping]] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., force: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class OverrideImpact(_message.Message):
    __slots__ = ("center", "skill", "agents", "load_erlangs", "service_level")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERLANGS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    center: str
    skill: str
    agents: int
    load_erlangs: float
    service_level: float
    def __init__(self, center: _Optional[str] = ..., skill: _Optional[str] = ..., agents: _Optional[int] = ..., load_erlangs: _Optional[float] = ..., service_level: _Optional[float] = ...) -> None: ...

class SetOverrideReply(_message.Message):
    __slots__ = ("status", "audit_id", "request_id", "plan_version", "message", "impact")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    audit_id: str
    request_id: str
    plan_version: int
    message: str
    impact: _containers.RepeatedCompositeFieldContainer[OverrideImpact]
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., audit_id: _Optional[str] = ..., request_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., message: _Optional[str] = ..., impact: _Optional[_Iterable[_Union[OverrideImpact, _Mapping]]] = ...) -> None: ...

class OverrideInfo(_message.Message):
    __slots__ = ("override", "operator", "reason", "set_at", "expires_at", "in_plan")
    OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SET_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IN_PLAN_FIELD_NUMBER: _ClassVar[int]
    override: OverrideSpec
    operator: str
    reason: str
    set_at: float
    expires_at: float
    in_plan: bool
    def __init__(self, override: _Optional[_Union[OverrideSpec, _Mapping]] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., set_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., in_plan: _Optional[bool] = ...) -> None: ...

class ListOverridesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOverridesReply(_message.Message):
    __slots__ = ("overrides", "plan_version")
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    overrides: _containers.RepeatedCompositeFieldContainer[OverrideInfo]
    plan_version: int
    def __init__(self, overrides: _Optional[_Iterable[_Union[OverrideInfo, _Mapping]]] = ..., plan_version: _Optional[int] = ...) -> None: ...

class ClearOverrideRequest(_message.Message):
    __slots__ = ("id", "operator", "reason", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    operator: str
    reason: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ClearOverrideReply(_message.Message):
    __slots__ = ("status", "audit_id", "plan_version", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    audit_id: str
    plan_version: int
    message: str
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., audit_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SetCalendarRequest(_message.Message):
    __slots__ = ("calendar_json", "operator", "reason", "request_id")
    CALENDAR_JSON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    calendar_json: str
    operator: str
    reason: str
    request_id: str
    def __init__(self, calendar_json: _Optional[str] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetCalendarReply(_message.Message):
    __slots__ = ("status", "audit_id", "plan_version", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    audit_id: str
    plan_version: int
    message: str
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., audit_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetCalendarRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCalendarReply(_message.Message):
    __slots__ = ("calendar_json",)
    CALENDAR_JSON_FIELD_NUMBER: _ClassVar[int]
    calendar_json: str
    def __init__(self, calendar_json: _Optional[str] = ...) -> None: ...

class SetEmergencyRequest(_message.Message):
    __slots__ = ("branch", "skill", "host", "until", "operator", "reason", "request_id")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    host: str
    until: float
    operator: str
    reason: str
    request_id: str
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., host: _Optional[str] = ..., until: _Optional[float] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ClearEmergencyRequest(_message.Message):
    __slots__ = ("branch", "skill", "operator", "reason", "request_id")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    operator: str
    reason: str
    request_id: str
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetEmergencyReply(_message.Message):
    __slots__ = ("status", "audit_id", "plan_version", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    audit_id: str
    plan_version: int
    message: str
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., audit_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListEmergenciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmergencyInfo(_message.Message):
    __slots__ = ("branch", "skill", "host", "operator", "reason", "set_at", "until", "in_plan", "description")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SET_AT_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    IN_PLAN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    host: str
    operator: str
    reason: str
    set_at: float
    until: float
    in_plan: bool
    description: str
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., host: _Optional[str] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., set_at: _Optional[float] = ..., until: _Optional[float] = ..., in_plan: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class ListEmergenciesReply(_message.Message):
    __slots__ = ("emergencies", "plan_version")
    EMERGENCIES_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    emergencies: _containers.RepeatedCompositeFieldContainer[EmergencyInfo]
    plan_version: int
    def __init__(self, emergencies: _Optional[_Iterable[_Union[EmergencyInfo, _Mapping]]] = ..., plan_version: _Optional[int] = ...) -> None: ...

class ApplyTopologyRequest(_message.Message):
    __slots__ = ("topology_yaml", "operator", "reason", "request_id", "dry_run")
    TOPOLOGY_YAML_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    topology_yaml: str
    operator: str
    reason: str
    request_id: str
    dry_run: bool
    def __init__(self, topology_yaml: _Optional[str] = ..., operator: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class TopologyChangeInfo(_message.Message):
    __slots__ = ("kind", "subject", "before", "after")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    kind: str
    subject: str
    before: str
    after: str
    def __init__(self, kind: _Optional[str] = ..., subject: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class TopologyMove(_message.Message):
    __slots__ = ("center", "why")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    center: str
    why: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, center: _Optional[str] = ..., why: _Optional[_Iterable[str]] = ...) -> None: ...

class ApplyTopologyReply(_message.Message):
    __slots__ = ("status", "audit_id", "request_id", "plan_version", "message", "from_version", "topology_version", "topology_hash", "changes", "moves_off", "route_changes", "below_target")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_HASH_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    MOVES_OFF_FIELD_NUMBER: _ClassVar[int]
    ROUTE_CHANGES_FIELD_NUMBER: _ClassVar[int]
    BELOW_TARGET_FIELD_NUMBER: _ClassVar[int]
    status: ChangeStatus
    audit_id: str
    request_id: str
    plan_version: int
    message: str
    from_version: int
    topology_version: int
    topology_hash: str
    changes: _containers.RepeatedCompositeFieldContainer[TopologyChangeInfo]
    moves_off: _containers.RepeatedCompositeFieldContainer[TopologyMove]
    route_changes: _containers.RepeatedCompositeFieldContainer[RouteChange]
    below_target: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[ChangeStatus, str]] = ..., audit_id: _Optional[str] = ..., request_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., message: _Optional[str] = ..., from_version: _Optional[int] = ..., topology_version: _Optional[int] = ..., topology_hash: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[TopologyChangeInfo, _Mapping]]] = ..., moves_off: _Optional[_Iterable[_Union[TopologyMove, _Mapping]]] = ..., route_changes: _Optional[_Iterable[_Union[RouteChange, _Mapping]]] = ..., below_target: _Optional[_Iterable[str]] = ...) -> None: ...

class TopologyVersionInfo(_message.Message):
    __slots__ = ("version", "hash", "operator", "approver", "reason", "applied_at", "diff", "changes", "request_id", "rollback", "rollback_of")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    operator: str
    approver: str
    reason: str
    applied_at: float
    diff: str
    changes: int
    request_id: str
    rollback: bool
    rollback_of: int
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., operator: _Optional[str] = ..., approver: _Optional[str] = ..., reason: _Optional[str] = ..., applied_at: _Optional[float] = ..., diff: _Optional[str] = ..., changes: _Optional[int] = ..., request_id: _Optional[str] = ..., rollback: _Optional[bool] = ..., rollback_of: _Optional[int] = ...) -> None: ...

class ShowTopologyRequest(_message.Message):
    __slots__ = ("version", "with_topology")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WITH_TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    version: int
    with_topology: bool
    def __init__(self, version: _Optional[int] = ..., with_topology: _Optional[bool] = ...) -> None: ...

class ShowTopologyReply(_message.Message):
    __slots__ = ("info", "topology_json", "stored")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_JSON_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    info: TopologyVersionInfo
    topology_json: str
    stored: bool
    def __init__(self, info: _Optional[_Union[TopologyVersionInfo, _Mapping]] = ..., topology_json: _Optional[str] = ..., stored: _Optional[bool] = ...) -> None: ...

class TopologyHistoryRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class TopologyHistoryReply(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[TopologyVersionInfo]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[TopologyVersionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RollbackTopologyRequest(_message.Message):
    __slots__ = ("version", "reason", "operator", "request_id", "dry_run")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    version: int
    reason: str
    operator: str
    request_id: str
    dry_run: bool
    def __init__(self, version: _Optional[int] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., request_id: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class RefuseRequest(_message.Message):
    __slots__ = ("request_id", "reason", "operator")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    operator: str
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class RefuseReply(_message.Message):
    __slots__ = ("audit_id", "message", "withdrawn")
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    audit_id: str
    message: str
    withdrawn: bool
    def __init__(self, audit_id: _Optional[str] = ..., message: _Optional[str] = ..., withdrawn: _Optional[bool] = ...) -> None: ...

class ListDrillsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDrillsReply(_message.Message):
    __slots__ = ("drills", "next_page_token")
    DRILLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    drills: _containers.RepeatedCompositeFieldContainer[Drill]
    next_page_token: str
    def __init__(self, drills: _Optional[_Iterable[_Union[Drill, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
