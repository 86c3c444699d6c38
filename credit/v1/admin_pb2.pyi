import datetime

from credit.v1 import types_pb2 as _types_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_ROLE_UNSPECIFIED: _ClassVar[MemberRole]
    MEMBER_ROLE_OWNER: _ClassVar[MemberRole]
    MEMBER_ROLE_ADMIN: _ClassVar[MemberRole]
    MEMBER_ROLE_MEMBER: _ClassVar[MemberRole]

class UsageGroupBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_GROUP_BY_UNSPECIFIED: _ClassVar[UsageGroupBy]
    USAGE_GROUP_BY_USER: _ClassVar[UsageGroupBy]
    USAGE_GROUP_BY_MODEL: _ClassVar[UsageGroupBy]
    USAGE_GROUP_BY_SERVICE_TYPE: _ClassVar[UsageGroupBy]
    USAGE_GROUP_BY_DAY: _ClassVar[UsageGroupBy]

class ApiKeyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_KEY_KIND_UNSPECIFIED: _ClassVar[ApiKeyKind]
    API_KEY_KIND_USER: _ClassVar[ApiKeyKind]
    API_KEY_KIND_SERVICE: _ClassVar[ApiKeyKind]
MEMBER_ROLE_UNSPECIFIED: MemberRole
MEMBER_ROLE_OWNER: MemberRole
MEMBER_ROLE_ADMIN: MemberRole
MEMBER_ROLE_MEMBER: MemberRole
USAGE_GROUP_BY_UNSPECIFIED: UsageGroupBy
USAGE_GROUP_BY_USER: UsageGroupBy
USAGE_GROUP_BY_MODEL: UsageGroupBy
USAGE_GROUP_BY_SERVICE_TYPE: UsageGroupBy
USAGE_GROUP_BY_DAY: UsageGroupBy
API_KEY_KIND_UNSPECIFIED: ApiKeyKind
API_KEY_KIND_USER: ApiKeyKind
API_KEY_KIND_SERVICE: ApiKeyKind

class User(_message.Message):
    __slots__ = ("user_id", "display_name", "email", "created_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    display_name: str
    email: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., display_name: _Optional[str] = ..., email: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateUserRequest(_message.Message):
    __slots__ = ("user_id", "display_name", "email")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    display_name: str
    email: str
    def __init__(self, user_id: _Optional[str] = ..., display_name: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class Organization(_message.Message):
    __slots__ = ("org_id", "name", "pool_total_millicredits", "allocated_millicredits", "unallocated_millicredits", "used_millicredits", "held_millicredits", "created_at")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_TOTAL_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    UNALLOCATED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    USED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    HELD_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    name: str
    pool_total_millicredits: int
    allocated_millicredits: int
    unallocated_millicredits: int
    used_millicredits: int
    held_millicredits: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, org_id: _Optional[str] = ..., name: _Optional[str] = ..., pool_total_millicredits: _Optional[int] = ..., allocated_millicredits: _Optional[int] = ..., unallocated_millicredits: _Optional[int] = ..., used_millicredits: _Optional[int] = ..., held_millicredits: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateOrganizationRequest(_message.Message):
    __slots__ = ("org_id", "name")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    name: str
    def __init__(self, org_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("org_id", "user_id", "role", "is_default", "allocation_millicredits", "used_millicredits", "held_millicredits", "available_millicredits", "joined_at")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    USED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    HELD_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    user_id: str
    role: MemberRole
    is_default: bool
    allocation_millicredits: int
    used_millicredits: int
    held_millicredits: int
    available_millicredits: int
    joined_at: _timestamp_pb2.Timestamp
    def __init__(self, org_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[_Union[MemberRole, str]] = ..., is_default: _Optional[bool] = ..., allocation_millicredits: _Optional[int] = ..., used_millicredits: _Optional[int] = ..., held_millicredits: _Optional[int] = ..., available_millicredits: _Optional[int] = ..., joined_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("org_id", "user_id", "role", "is_default")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    user_id: str
    role: MemberRole
    is_default: bool
    def __init__(self, org_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[_Union[MemberRole, str]] = ..., is_default: _Optional[bool] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("org_id", "user_id")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    user_id: str
    def __init__(self, org_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class RemoveMemberResponse(_message.Message):
    __slots__ = ("returned_to_pool_millicredits",)
    RETURNED_TO_POOL_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    returned_to_pool_millicredits: int
    def __init__(self, returned_to_pool_millicredits: _Optional[int] = ...) -> None: ...

class TopUpPoolRequest(_message.Message):
    __slots__ = ("org_id", "amount_millicredits", "purchase_reference", "purchase_amount", "purchase_currency")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    amount_millicredits: int
    purchase_reference: str
    purchase_amount: str
    purchase_currency: str
    def __init__(self, org_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., purchase_reference: _Optional[str] = ..., purchase_amount: _Optional[str] = ..., purchase_currency: _Optional[str] = ...) -> None: ...

class SetAllocationRequest(_message.Message):
    __slots__ = ("org_id", "user_id", "allocation_millicredits", "allocated_by")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BY_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    user_id: str
    allocation_millicredits: int
    allocated_by: str
    def __init__(self, org_id: _Optional[str] = ..., user_id: _Optional[str] = ..., allocation_millicredits: _Optional[int] = ..., allocated_by: _Optional[str] = ...) -> None: ...

class GrantIndividualCreditsRequest(_message.Message):
    __slots__ = ("user_id", "amount_millicredits", "reason", "reference")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    amount_millicredits: int
    reason: str
    reference: str
    def __init__(self, user_id: _Optional[str] = ..., amount_millicredits: _Optional[int] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class IndividualBalance(_message.Message):
    __slots__ = ("user_id", "limit_millicredits", "used_millicredits", "held_millicredits", "available_millicredits")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    USED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    HELD_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit_millicredits: int
    used_millicredits: int
    held_millicredits: int
    available_millicredits: int
    def __init__(self, user_id: _Optional[str] = ..., limit_millicredits: _Optional[int] = ..., used_millicredits: _Optional[int] = ..., held_millicredits: _Optional[int] = ..., available_millicredits: _Optional[int] = ...) -> None: ...

class GetOrganizationRequest(_message.Message):
    __slots__ = ("org_id",)
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    def __init__(self, org_id: _Optional[str] = ...) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ("org_id",)
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    def __init__(self, org_id: _Optional[str] = ...) -> None: ...

class ListMembersResponse(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class QueryUsageRequest(_message.Message):
    __slots__ = ("org_id", "user_id", "service_type", "model", "start_time", "end_time", "group_by", "limit")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    user_id: str
    service_type: str
    model: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    group_by: UsageGroupBy
    limit: int
    def __init__(self, org_id: _Optional[str] = ..., user_id: _Optional[str] = ..., service_type: _Optional[str] = ..., model: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., group_by: _Optional[_Union[UsageGroupBy, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("reservation_id", "org_id", "user_id", "funding_kind", "service_type", "service_name", "credits_used_millicredits", "request_id", "request_metadata", "overrun", "late", "created_at")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FUNDING_KIND_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    CREDITS_USED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_METADATA_FIELD_NUMBER: _ClassVar[int]
    OVERRUN_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    org_id: str
    user_id: str
    funding_kind: _types_pb2.Funding.Kind
    service_type: str
    service_name: str
    credits_used_millicredits: int
    request_id: str
    request_metadata: _struct_pb2.Struct
    overrun: bool
    late: bool
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, reservation_id: _Optional[str] = ..., org_id: _Optional[str] = ..., user_id: _Optional[str] = ..., funding_kind: _Optional[_Union[_types_pb2.Funding.Kind, str]] = ..., service_type: _Optional[str] = ..., service_name: _Optional[str] = ..., credits_used_millicredits: _Optional[int] = ..., request_id: _Optional[str] = ..., request_metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., overrun: _Optional[bool] = ..., late: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageGroup(_message.Message):
    __slots__ = ("key", "requests", "credits_used_millicredits")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_USED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    key: str
    requests: int
    credits_used_millicredits: int
    def __init__(self, key: _Optional[str] = ..., requests: _Optional[int] = ..., credits_used_millicredits: _Optional[int] = ...) -> None: ...

class QueryUsageResponse(_message.Message):
    __slots__ = ("records", "groups", "total_millicredits", "total_requests")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    groups: _containers.RepeatedCompositeFieldContainer[UsageGroup]
    total_millicredits: int
    total_requests: int
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[UsageGroup, _Mapping]]] = ..., total_millicredits: _Optional[int] = ..., total_requests: _Optional[int] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "user_id", "org_id", "kind", "name", "created_at", "revoked_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    user_id: str
    org_id: str
    kind: ApiKeyKind
    name: str
    created_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., user_id: _Optional[str] = ..., org_id: _Optional[str] = ..., kind: _Optional[_Union[ApiKeyKind, str]] = ..., name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("user_id", "org_id", "kind", "name")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    kind: ApiKeyKind
    name: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ..., kind: _Optional[_Union[ApiKeyKind, str]] = ..., name: _Optional[str] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class VerifyApiKeyRequest(_message.Message):
    __slots__ = ("secret",)
    SECRET_FIELD_NUMBER: _ClassVar[int]
    secret: str
    def __init__(self, secret: _Optional[str] = ...) -> None: ...

class VerifyApiKeyResponse(_message.Message):
    __slots__ = ("valid", "key")
    VALID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    key: ApiKey
    def __init__(self, valid: _Optional[bool] = ..., key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("user_id", "org_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    org_id: str
    def __init__(self, user_id: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...
