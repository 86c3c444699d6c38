import datetime

from credit.v1 import types_pb2 as _types_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckRequest(_message.Message):
    __slots__ = ("user_id", "org_id", "amount_millicredits")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    amount_millicredits: int
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("allowed", "funding", "available_millicredits")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    FUNDING_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    funding: _types_pb2.Funding
    available_millicredits: int
    def __init__(self, allowed: _Optional[bool] = ..., funding: _Optional[_Union[_types_pb2.Funding, _Mapping]] = ..., available_millicredits: _Optional[int] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "org_id", "amount_millicredits", "ttl_seconds", "service_type", "service_name", "metadata")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    org_id: str
    amount_millicredits: int
    ttl_seconds: int
    service_type: str
    service_name: str
    metadata: _struct_pb2.Struct
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., org_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., service_type: _Optional[str] = ..., service_name: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("reservation_id", "funding", "reserved_millicredits", "available_millicredits", "expires_at", "replayed", "status")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNDING_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    funding: _types_pb2.Funding
    reserved_millicredits: int
    available_millicredits: int
    expires_at: _timestamp_pb2.Timestamp
    replayed: bool
    status: str
    def __init__(self, reservation_id: _Optional[str] = ..., funding: _Optional[_Union[_types_pb2.Funding, _Mapping]] = ..., reserved_millicredits: _Optional[int] = ..., available_millicredits: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replayed: _Optional[bool] = ..., status: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("reservation_id", "amount_millicredits", "metadata")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    amount_millicredits: int
    metadata: _struct_pb2.Struct
    def __init__(self, reservation_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("charged_millicredits", "available_millicredits", "overrun", "late", "funding")
    CHARGED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    OVERRUN_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    FUNDING_FIELD_NUMBER: _ClassVar[int]
    charged_millicredits: int
    available_millicredits: int
    overrun: bool
    late: bool
    funding: _types_pb2.Funding
    def __init__(self, charged_millicredits: _Optional[int] = ..., available_millicredits: _Optional[int] = ..., overrun: _Optional[bool] = ..., late: _Optional[bool] = ..., funding: _Optional[_Union[_types_pb2.Funding, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id", "reason")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    reason: str
    def __init__(self, reservation_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("user_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("funding", "limit_millicredits", "used_millicredits", "held_millicredits", "available_millicredits")
    FUNDING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    USED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    HELD_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    funding: _types_pb2.Funding
    limit_millicredits: int
    used_millicredits: int
    held_millicredits: int
    available_millicredits: int
    def __init__(self, funding: _Optional[_Union[_types_pb2.Funding, _Mapping]] = ..., limit_millicredits: _Optional[int] = ..., used_millicredits: _Optional[int] = ..., held_millicredits: _Optional[int] = ..., available_millicredits: _Optional[int] = ...) -> None: ...
