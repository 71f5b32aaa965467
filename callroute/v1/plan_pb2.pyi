from callroute.v1 import types_pb2 as _types_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanRequest(_message.Message):
    __slots__ = ("center", "node", "known_version", "response_to_version", "response_nonce", "ack", "error_detail")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_NONCE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    center: str
    node: str
    known_version: int
    response_to_version: int
    response_nonce: str
    ack: bool
    error_detail: str
    def __init__(self, center: _Optional[str] = ..., node: _Optional[str] = ..., known_version: _Optional[int] = ..., response_to_version: _Optional[int] = ..., response_nonce: _Optional[str] = ..., ack: _Optional[bool] = ..., error_detail: _Optional[str] = ...) -> None: ...

class PlanPush(_message.Message):
    __slots__ = ("version", "nonce", "plan", "served_by")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    plan: _types_pb2.Plan
    served_by: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., plan: _Optional[_Union[_types_pb2.Plan, _Mapping]] = ..., served_by: _Optional[str] = ...) -> None: ...
