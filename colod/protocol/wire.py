# -*- test-case-name: tests.protocol.test_golden,tests.protocol.test_decoder -*-
"""
The numbers and fixed layouts of Xen's migration-v2 streams, and colod's few
additions to them.

Everything here comes from Xen's C headers (libxl_sr_stream_format.h,
xg_sr_stream_format.h) as summarised in docs/protocol.md; the values are the
contract, so they live in one place that both directions of the codec read.
"""

from __future__ import annotations

import enum
import struct
import sys
from array import array

#: Every record, header included, is padded with zeros to this multiple.
REC_ALIGN = 8
#: Longest record body Xen's libxc reader accepts (REC_LENGTH_MAX); colod
#: applies it to both namespaces so no peer can make us allocate more.
REC_LENGTH_MAX = 128 << 20
#: Bytes of data per page in PAGE_DATA and SHARED_INFO (page_shift 12).
PAGE_SIZE = 4096
PAGE_SHIFT = 12

LIBXL_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_VERSION = 2
LIBXL_OPT_BIG_ENDIAN = 1 << 0
LIBXL_OPT_LEGACY = 1 << 1

IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_ID = 0x58454E46  # "XENF"
IHDR_VERSIONS = frozenset({2, 3})
IHDR_OPT_BIG_ENDIAN = 1 << 0

#: Bit 31 of a record type: a reader may skip the record if it does not know it.
REC_TYPE_OPTIONAL = 0x80000000


def padding(length: int) -> int:
    """Zero bytes that follow a body of C{length} bytes on the wire."""
    return -length % REC_ALIGN


class Namespace(enum.Enum):
    """Which table a record type number is looked up in; the numbers overlap."""

    LIBXL = "libxl"
    LIBXC = "libxc"


class LibxlType(enum.IntEnum):
    END = 0x0
    LIBXC_CONTEXT = 0x1
    EMULATOR_XENSTORE_DATA = 0x2
    EMULATOR_CONTEXT = 0x3
    CHECKPOINT_END = 0x4
    CHECKPOINT_STATE = 0x5


class LibxcType(enum.IntEnum):
    END = 0x00
    PAGE_DATA = 0x01
    X86_PV_INFO = 0x02
    X86_PV_P2M_FRAMES = 0x03
    X86_PV_VCPU_BASIC = 0x04
    X86_PV_VCPU_EXTENDED = 0x05
    X86_PV_VCPU_XSAVE = 0x06
    SHARED_INFO = 0x07
    X86_TSC_INFO = 0x08
    HVM_CONTEXT = 0x09
    HVM_PARAMS = 0x0A
    TOOLSTACK = 0x0B
    X86_PV_VCPU_MSRS = 0x0C
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    STATIC_DATA_END = 0x10
    X86_CPUID_POLICY = 0x11
    X86_MSR_POLICY = 0x12


class ColodType(enum.IntEnum):
    """
    colod's own records.  They sit in the optional range (bit 31 set) under
    a prefix no Xen record uses, and mean the same in both namespaces.
    """

    HEARTBEAT = 0xC010D001
    COLOD_REPLICATION_END = 0xC010D002


class ReplicationEndReason(enum.IntEnum):
    """
    Why a colod ended replication on purpose (COLOD_REPLICATION_END).  The
    receiver acts on it: after SHUTDOWN it must not take over the guest.
    """

    #: The sender's colod is stopping, or was told to drop replication; its guest keeps running where it is.
    SHUTDOWN = 1
    #: The sender found the receiver's stream or behaviour wrong.
    PROTOCOL_ERROR = 2
    #: The sender cannot go on, e.g. its devices failed.
    LOCAL_FAILURE = 3


class CheckpointId(enum.IntEnum):
    """CHECKPOINT_STATE control ids (libxl_sr_checkpoint_state.id)."""

    NEW = 0
    SVM_SUSPENDED = 1
    SVM_READY = 2
    SVM_RESUMED = 3


class EmulatorId(enum.IntEnum):
    UNKNOWN = 0
    QEMU_TRADITIONAL = 1
    QEMU_UPSTREAM = 2


class GuestType(enum.IntEnum):
    X86_PV = 1
    X86_HVM = 2


class PageType(enum.IntEnum):
    """XEN_DOMCTL_PFINFO_* >> 28, as found in the top nibble of a pfn word."""

    NOTAB = 0x0
    L1TAB = 0x1
    L2TAB = 0x2
    L3TAB = 0x3
    L4TAB = 0x4
    L1TAB_PINNED = 0x9
    L2TAB_PINNED = 0xA
    L3TAB_PINNED = 0xB
    L4TAB_PINNED = 0xC
    BROKEN = 0xD
    XALLOC = 0xE
    XTAB = 0xF


#: Page types that carry no page data in PAGE_DATA.
PAGE_TYPES_WITHOUT_DATA = frozenset({PageType.BROKEN, PageType.XALLOC, PageType.XTAB})

STREAM_HEADER = struct.Struct(">QII")  # libxl: ident, version, options
IMAGE_HEADER = struct.Struct(">QIIHHI")  # libxc: marker, id, version, options, res, res
DOMAIN_HEADER = struct.Struct("<IHHII")  # type, page_shift, res, xen_major, xen_minor
RECORD_HEADER = struct.Struct("<II")  # type, body length
U32_PAIR = struct.Struct("<II")  # emulator/page-data/vcpu/hvm-params/p2m/replication-end sub-headers
U32 = struct.Struct("<I")
PV_INFO = struct.Struct("<BBHI")  # guest_width, pt_levels, res, res
TSC_INFO = struct.Struct("<IIQII")  # mode, khz, nsec, incarnation, res
HVM_PARAM = struct.Struct("<QQ")  # index, value
CPUID_LEAF = struct.Struct("<IIIIII")  # leaf, subleaf, a, b, c, d
MSR_ENTRY = struct.Struct("<IIQ")  # idx, flags, val
HEARTBEAT = struct.Struct("<QQ")  # sequence, sender's clock in ns


def u64_array(data: bytes | bytearray | memoryview) -> array:
    """Little-endian u64 words as an C{array('Q')}, one copy, no per-item objects."""
    words = array("Q")
    words.frombytes(data)
    if sys.byteorder == "big":
        words.byteswap()
    return words


def u64_bytes(words: array) -> bytes:
    """The inverse of L{u64_array}."""
    if sys.byteorder == "big":
        words = array("Q", words)
        words.byteswap()
    return words.tobytes()
