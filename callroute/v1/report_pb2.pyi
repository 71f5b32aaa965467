from callroute.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CenterReport(_message.Message):
    __slots__ = ("center", "seq", "sent_at", "interval_s", "state", "incarnation", "probes", "broken_paths", "skills", "routed_to", "demand", "calls", "acd", "outcomes", "gauges_from", "counts_only", "skill_sets")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    BROKEN_PATHS_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    ROUTED_TO_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ACD_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    GAUGES_FROM_FIELD_NUMBER: _ClassVar[int]
    COUNTS_ONLY_FIELD_NUMBER: _ClassVar[int]
    SKILL_SETS_FIELD_NUMBER: _ClassVar[int]
    center: str
    seq: int
    sent_at: float
    interval_s: float
    state: _types_pb2.AdminState
    incarnation: int
    probes: _containers.RepeatedCompositeFieldContainer[ProbeResult]
    broken_paths: _containers.RepeatedCompositeFieldContainer[BrokenPath]
    skills: _containers.RepeatedCompositeFieldContainer[SkillReport]
    routed_to: _containers.RepeatedCompositeFieldContainer[RoutedCount]
    demand: _containers.RepeatedCompositeFieldContainer[BranchDemand]
    calls: _containers.RepeatedCompositeFieldContainer[CallCount]
    acd: _containers.RepeatedCompositeFieldContainer[AcdCount]
    outcomes: _containers.RepeatedCompositeFieldContainer[OutcomeCount]
    gauges_from: AcdId
    counts_only: bool
    skill_sets: _containers.RepeatedCompositeFieldContainer[SkillSetAgents]
    def __init__(self, center: _Optional[str] = ..., seq: _Optional[int] = ..., sent_at: _Optional[float] = ..., interval_s: _Optional[float] = ..., state: _Optional[_Union[_types_pb2.AdminState, str]] = ..., incarnation: _Optional[int] = ..., probes: _Optional[_Iterable[_Union[ProbeResult, _Mapping]]] = ..., broken_paths: _Optional[_Iterable[_Union[BrokenPath, _Mapping]]] = ..., skills: _Optional[_Iterable[_Union[SkillReport, _Mapping]]] = ..., routed_to: _Optional[_Iterable[_Union[RoutedCount, _Mapping]]] = ..., demand: _Optional[_Iterable[_Union[BranchDemand, _Mapping]]] = ..., calls: _Optional[_Iterable[_Union[CallCount, _Mapping]]] = ..., acd: _Optional[_Iterable[_Union[AcdCount, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[OutcomeCount, _Mapping]]] = ..., gauges_from: _Optional[_Union[AcdId, _Mapping]] = ..., counts_only: _Optional[bool] = ..., skill_sets: _Optional[_Iterable[_Union[SkillSetAgents, _Mapping]]] = ...) -> None: ...

class SkillSetAgents(_message.Message):
    __slots__ = ("skills", "logged_in", "ready")
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    LOGGED_IN_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    skills: _containers.RepeatedScalarFieldContainer[str]
    logged_in: int
    ready: int
    def __init__(self, skills: _Optional[_Iterable[str]] = ..., logged_in: _Optional[int] = ..., ready: _Optional[int] = ...) -> None: ...

class AcdId(_message.Message):
    __slots__ = ("source", "epoch", "seq")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    source: str
    epoch: int
    seq: int
    def __init__(self, source: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class OutcomeCount(_message.Message):
    __slots__ = ("skill", "outcome", "calls")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    skill: str
    outcome: str
    calls: int
    def __init__(self, skill: _Optional[str] = ..., outcome: _Optional[str] = ..., calls: _Optional[int] = ...) -> None: ...

class AcdCount(_message.Message):
    __slots__ = ("source", "epoch", "seq", "skills")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    source: str
    epoch: int
    seq: int
    skills: _containers.RepeatedCompositeFieldContainer[AcdSkillCount]
    def __init__(self, source: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., skills: _Optional[_Iterable[_Union[AcdSkillCount, _Mapping]]] = ...) -> None: ...

class AcdSkillCount(_message.Message):
    __slots__ = ("skill", "offered", "answered", "answered_within", "abandoned")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    OFFERED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_WITHIN_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    skill: str
    offered: int
    answered: int
    answered_within: int
    abandoned: int
    def __init__(self, skill: _Optional[str] = ..., offered: _Optional[int] = ..., answered: _Optional[int] = ..., answered_within: _Optional[int] = ..., abandoned: _Optional[int] = ...) -> None: ...

class CallCount(_message.Message):
    __slots__ = ("branch", "skill", "center", "calls")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    center: str
    calls: int
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., center: _Optional[str] = ..., calls: _Optional[int] = ...) -> None: ...

class SkillReport(_message.Message):
    __slots__ = ("skill", "logged_in", "ready", "busy", "queued", "oldest_wait_s", "offered", "answered", "answered_within", "abandoned", "aht_s")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    LOGGED_IN_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    OFFERED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_WITHIN_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    AHT_S_FIELD_NUMBER: _ClassVar[int]
    skill: str
    logged_in: int
    ready: int
    busy: int
    queued: int
    oldest_wait_s: float
    offered: int
    answered: int
    answered_within: int
    abandoned: int
    aht_s: float
    def __init__(self, skill: _Optional[str] = ..., logged_in: _Optional[int] = ..., ready: _Optional[int] = ..., busy: _Optional[int] = ..., queued: _Optional[int] = ..., oldest_wait_s: _Optional[float] = ..., offered: _Optional[int] = ..., answered: _Optional[int] = ..., answered_within: _Optional[int] = ..., abandoned: _Optional[int] = ..., aht_s: _Optional[float] = ...) -> None: ...

class RoutedCount(_message.Message):
    __slots__ = ("center", "calls")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    center: str
    calls: int
    def __init__(self, center: _Optional[str] = ..., calls: _Optional[int] = ...) -> None: ...

class BrokenPath(_message.Message):
    __slots__ = ("center", "reason")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    center: str
    reason: str
    def __init__(self, center: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ProbeResult(_message.Message):
    __slots__ = ("center", "reachable", "rtt_ms")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    center: str
    reachable: bool
    rtt_ms: float
    def __init__(self, center: _Optional[str] = ..., reachable: _Optional[bool] = ..., rtt_ms: _Optional[float] = ...) -> None: ...

class BranchDemand(_message.Message):
    __slots__ = ("branch", "skill", "lookups")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    branch: str
    skill: str
    lookups: int
    def __init__(self, branch: _Optional[str] = ..., skill: _Optional[str] = ..., lookups: _Optional[int] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("seq", "accepted", "error", "error_field", "plan_version", "prior_accepted_seq", "probe")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIOR_ACCEPTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    accepted: bool
    error: str
    error_field: str
    plan_version: int
    prior_accepted_seq: int
    probe: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., accepted: _Optional[bool] = ..., error: _Optional[str] = ..., error_field: _Optional[str] = ..., plan_version: _Optional[int] = ..., prior_accepted_seq: _Optional[int] = ..., probe: _Optional[_Iterable[str]] = ...) -> None: ...
