from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Funding(_message.Message):
    __slots__ = ("kind", "org_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Funding.Kind]
        ORG: _ClassVar[Funding.Kind]
        INDIVIDUAL: _ClassVar[Funding.Kind]
    KIND_UNSPECIFIED: Funding.Kind
    ORG: Funding.Kind
    INDIVIDUAL: Funding.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    kind: Funding.Kind
    org_id: str
    def __init__(self, kind: _Optional[_Union[Funding.Kind, str]] = ..., org_id: _Optional[str] = ...) -> None: ...
