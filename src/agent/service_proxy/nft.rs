//! nftables over netlink: statements encoded as libnftnl expressions, tables, chains, rules
//! and verdict-map elements gathered into one batch (one kernel transaction, all or
//! nothing), sent on a netfilter netlink socket and acknowledged message by message.
use std::ffi::{c_void, CString};
use std::net::IpAddr;
use std::os::raw::c_char;
use std::ptr;
use std::time::Duration;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{Batch, FinalizedBatch, MsgType, ProtoFamily};

use super::rules::{BaseHook, ChainDef, Family, Hook, Rule, Stmt, TABLE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("nftables refused the batch: {0}")]
    Refused(std::io::Error),
    #[error("a name holds a NUL byte: {0:?}")]
    Name(String),
}

const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const NF_ACCEPT: i32 = 1;
const NF_DROP: i32 = 0;
/// Conntrack state bits as nft's `ct state` sees them.
const CT_ESTABLISHED: u32 = 1 << 1;
const CT_RELATED: u32 = 1 << 2;
/// nft's key types (`ipv4_addr`, `ipv6_addr`, `inet_service`).
const KEY_IPV4: u32 = 7;
const KEY_IPV6: u32 = 8;
const KEY_INET_SERVICE: u32 = 13;
/// At most this many map elements per netlink message (a message stays under 64 KiB).
const ELEMS_PER_MESSAGE: usize = 200;

fn cstr(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Name(s.to_string()))
}

/// One attribute of a raw expression.
enum Attr {
    U32(u32, u32),
    U8(u32, u8),
    Bytes(u32, Vec<u8>),
    Str(u32, CString),
}

/// A libnftnl expression by name and attributes: lets krab use expressions the `nftnl` crate
/// does not wrap (numgen, fib, lookup into a verdict map) the same way as the ones it does.
struct RawExpr {
    name: &'static std::ffi::CStr,
    attrs: Vec<Attr>,
}

impl Expression for RawExpr {
    fn to_expr(&self, _rule: &nftnl::Rule) -> ptr::NonNull<sys::nftnl_expr> {
        // SAFETY: libnftnl copies every attribute value it is given; a NULL allocation is
        // an out-of-memory condition, handled as the nftnl crate does (abort).
        unsafe {
            let Some(expr) = ptr::NonNull::new(sys::nftnl_expr_alloc(self.name.as_ptr())) else {
                std::process::abort();
            };
            for a in &self.attrs {
                match a {
                    Attr::U32(t, v) => sys::nftnl_expr_set_u32(expr.as_ptr(), *t as u16, *v),
                    Attr::U8(t, v) => sys::nftnl_expr_set_u8(expr.as_ptr(), *t as u16, *v),
                    Attr::Bytes(t, v) => {
                        sys::nftnl_expr_set(
                            expr.as_ptr(),
                            *t as u16,
                            v.as_ptr() as *const c_void,
                            v.len() as u32,
                        );
                    }
                    Attr::Str(t, v) => {
                        sys::nftnl_expr_set_str(expr.as_ptr(), *t as u16, v.as_ptr());
                    }
                }
            }
            expr
        }
    }
}

fn payload(base: i32, offset: u32, len: u32) -> RawExpr {
    RawExpr {
        name: c"payload",
        attrs: vec![
            Attr::U32(sys::NFTNL_EXPR_PAYLOAD_DREG, libc::NFT_REG_1 as u32),
            Attr::U32(sys::NFTNL_EXPR_PAYLOAD_BASE, base as u32),
            Attr::U32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset),
            Attr::U32(sys::NFTNL_EXPR_PAYLOAD_LEN, len),
        ],
    }
}

fn cmp(eq: bool, data: Vec<u8>) -> RawExpr {
    cmp_op(
        if eq {
            libc::NFT_CMP_EQ
        } else {
            libc::NFT_CMP_NEQ
        },
        data,
    )
}

fn cmp_op(op: i32, data: Vec<u8>) -> RawExpr {
    RawExpr {
        name: c"cmp",
        attrs: vec![
            Attr::U32(sys::NFTNL_EXPR_CMP_SREG, libc::NFT_REG_1 as u32),
            Attr::U32(sys::NFTNL_EXPR_CMP_OP, op as u32),
            Attr::Bytes(sys::NFTNL_EXPR_CMP_DATA, data),
        ],
    }
}

fn bitwise(mask: Vec<u8>, xor: Vec<u8>) -> RawExpr {
    RawExpr {
        name: c"bitwise",
        attrs: vec![
            Attr::U32(sys::NFTNL_EXPR_BITWISE_SREG, libc::NFT_REG_1 as u32),
            Attr::U32(sys::NFTNL_EXPR_BITWISE_DREG, libc::NFT_REG_1 as u32),
            Attr::U32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32),
            Attr::Bytes(sys::NFTNL_EXPR_BITWISE_MASK, mask),
            Attr::Bytes(sys::NFTNL_EXPR_BITWISE_XOR, xor),
        ],
    }
}

fn meta_load(key: i32) -> RawExpr {
    RawExpr {
        name: c"meta",
        attrs: vec![
            Attr::U32(sys::NFTNL_EXPR_META_KEY, key as u32),
            Attr::U32(sys::NFTNL_EXPR_META_DREG, libc::NFT_REG_1 as u32),
        ],
    }
}

fn verdict(code: i32, chain: Option<CString>) -> RawExpr {
    let mut attrs = vec![
        Attr::U32(sys::NFTNL_EXPR_IMM_DREG, libc::NFT_REG_VERDICT as u32),
        Attr::U32(sys::NFTNL_EXPR_IMM_VERDICT, code as u32),
    ];
    if let Some(c) = chain {
        attrs.push(Attr::Str(sys::NFTNL_EXPR_IMM_CHAIN, c));
    }
    RawExpr {
        name: c"immediate",
        attrs,
    }
}

fn lookup_vmap(map: &str) -> Result<RawExpr, Error> {
    Ok(RawExpr {
        name: c"lookup",
        attrs: vec![
            Attr::U32(sys::NFTNL_EXPR_LOOKUP_SREG, libc::NFT_REG_1 as u32),
            Attr::U32(sys::NFTNL_EXPR_LOOKUP_DREG, libc::NFT_REG_VERDICT as u32),
            Attr::Str(sys::NFTNL_EXPR_LOOKUP_SET, cstr(map)?),
        ],
    })
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn nfproto(family: Family) -> u32 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn addr_key_type(family: Family) -> u32 {
    match family {
        Family::V4 => KEY_IPV4,
        Family::V6 => KEY_IPV6,
    }
}

fn addr_match(source: bool, net: &ipnet::IpNet, negate: bool) -> Vec<RawExpr> {
    let family = Family::of(&net.addr());
    let offset = if source {
        family.saddr_offset()
    } else {
        family.daddr_offset()
    };
    let len = family.addr_len();
    let mut v = vec![payload(libc::NFT_PAYLOAD_NETWORK_HEADER, offset, len)];
    if net.prefix_len() < net.max_prefix_len() {
        v.push(bitwise(octets(&net.netmask()), vec![0; len as usize]));
    }
    v.push(cmp(!negate, octets(&net.network())));
    v
}

fn saddr(family: Family) -> RawExpr {
    payload(
        libc::NFT_PAYLOAD_NETWORK_HEADER,
        family.saddr_offset(),
        family.addr_len(),
    )
}

/// The expressions of one statement in a table of `family`.
fn encode(stmt: &Stmt, family: Family) -> Result<Vec<RawExpr>, Error> {
    Ok(match stmt {
        Stmt::Daddr { net, negate } => addr_match(false, net, *negate),
        Stmt::Saddr { net, negate } => addr_match(true, net, *negate),
        Stmt::L4Proto(p) => vec![meta_load(libc::NFT_META_L4PROTO), cmp(true, vec![*p])],
        Stmt::Dport(p) => vec![
            payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp(true, p.to_be_bytes().to_vec()),
        ],
        Stmt::FibDaddrLocal => vec![
            RawExpr {
                name: c"fib",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_FIB_DREG, libc::NFT_REG_1 as u32),
                    Attr::U32(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                    Attr::U32(sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR),
                ],
            },
            cmp(true, RTN_LOCAL.to_ne_bytes().to_vec()),
        ],
        Stmt::NumgenZero { modulus } => vec![
            RawExpr {
                name: c"numgen",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_NG_DREG, libc::NFT_REG_1 as u32),
                    Attr::U32(sys::NFTNL_EXPR_NG_MODULUS, *modulus),
                    Attr::U32(sys::NFTNL_EXPR_NG_TYPE, libc::NFT_NG_RANDOM as u32),
                    Attr::U32(sys::NFTNL_EXPR_NG_OFFSET, 0),
                ],
            },
            cmp(true, 0u32.to_ne_bytes().to_vec()),
        ],
        Stmt::SetMark(bits) => vec![
            meta_load(libc::NFT_META_MARK),
            bitwise((!bits).to_ne_bytes().to_vec(), bits.to_ne_bytes().to_vec()),
            RawExpr {
                name: c"meta",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_META_KEY, libc::NFT_META_MARK as u32),
                    Attr::U32(sys::NFTNL_EXPR_META_SREG, libc::NFT_REG_1 as u32),
                ],
            },
        ],
        Stmt::MarkHas(bits) => vec![
            meta_load(libc::NFT_META_MARK),
            bitwise(bits.to_ne_bytes().to_vec(), vec![0; 4]),
            cmp(true, bits.to_ne_bytes().to_vec()),
        ],
        Stmt::SaddrInSet(set, fam) => vec![
            saddr(*fam),
            RawExpr {
                name: c"lookup",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_LOOKUP_SREG, libc::NFT_REG_1 as u32),
                    Attr::Str(sys::NFTNL_EXPR_LOOKUP_SET, cstr(set)?),
                ],
            },
        ],
        Stmt::UpdateSaddr(set, fam) => vec![
            saddr(*fam),
            RawExpr {
                name: c"dynset",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_DYNSET_SREG_KEY, libc::NFT_REG_1 as u32),
                    Attr::U32(sys::NFTNL_EXPR_DYNSET_OP, libc::NFT_DYNSET_OP_UPDATE as u32),
                    Attr::Str(sys::NFTNL_EXPR_DYNSET_SET_NAME, cstr(set)?),
                ],
            },
        ],
        Stmt::DaddrVmap(map, fam) => vec![
            payload(
                libc::NFT_PAYLOAD_NETWORK_HEADER,
                fam.daddr_offset(),
                fam.addr_len(),
            ),
            lookup_vmap(map)?,
        ],
        Stmt::DportVmap(map) => vec![
            payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            lookup_vmap(map)?,
        ],
        Stmt::Dnat { addr, port } => vec![
            RawExpr {
                name: c"immediate",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_IMM_DREG, libc::NFT_REG_1 as u32),
                    Attr::Bytes(sys::NFTNL_EXPR_IMM_DATA, octets(addr)),
                ],
            },
            RawExpr {
                name: c"immediate",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_IMM_DREG, libc::NFT_REG_2 as u32),
                    Attr::Bytes(sys::NFTNL_EXPR_IMM_DATA, port.to_be_bytes().to_vec()),
                ],
            },
            RawExpr {
                name: c"nat",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_NAT_TYPE, libc::NFT_NAT_DNAT as u32),
                    Attr::U32(sys::NFTNL_EXPR_NAT_FAMILY, nfproto(Family::of(addr))),
                    Attr::U32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, libc::NFT_REG_1 as u32),
                    Attr::U32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, libc::NFT_REG_2 as u32),
                ],
            },
        ],
        Stmt::Masquerade => vec![RawExpr {
            name: c"masq",
            attrs: vec![],
        }],
        Stmt::Reject => vec![RawExpr {
            name: c"reject",
            attrs: vec![
                Attr::U32(
                    sys::NFTNL_EXPR_REJECT_TYPE,
                    libc::NFT_REJECT_ICMP_UNREACH as u32,
                ),
                Attr::U8(
                    sys::NFTNL_EXPR_REJECT_CODE,
                    match family {
                        Family::V4 => ICMP_PORT_UNREACH,
                        Family::V6 => ICMPV6_PORT_UNREACH,
                    },
                ),
            ],
        }],
        Stmt::Goto(c) => vec![verdict(libc::NFT_GOTO, Some(cstr(c)?))],
        Stmt::Jump(c) => vec![verdict(libc::NFT_JUMP, Some(cstr(c)?))],
        Stmt::Return => vec![verdict(libc::NFT_RETURN, None)],
        Stmt::Accept => vec![verdict(NF_ACCEPT, None)],
        Stmt::Drop => vec![verdict(NF_DROP, None)],
        Stmt::DportRange(lo, hi) => vec![
            payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp_op(libc::NFT_CMP_GTE, lo.to_be_bytes().to_vec()),
            cmp_op(libc::NFT_CMP_LTE, hi.to_be_bytes().to_vec()),
        ],
        Stmt::CtEstablished => vec![
            RawExpr {
                name: c"ct",
                attrs: vec![
                    Attr::U32(sys::NFTNL_EXPR_CT_KEY, libc::NFT_CT_STATE as u32),
                    Attr::U32(sys::NFTNL_EXPR_CT_DREG, libc::NFT_REG_1 as u32),
                ],
            },
            bitwise(
                (CT_ESTABLISHED | CT_RELATED).to_ne_bytes().to_vec(),
                vec![0; 4],
            ),
            cmp(false, vec![0; 4]),
        ],
    })
}

/// A verdict map of the table (`type ipv4_addr : verdict` or `type inet_service : verdict`).
struct MapMsg {
    family: Family,
    name: CString,
    /// The kernel wants an id for a set made in a transaction (rules may refer to it by id).
    id: u32,
    key_type: u32,
    key_len: u32,
    /// A verdict map (else a plain set of keys).
    verdicts: bool,
    /// Elements expire after this long (a set rules add to; milliseconds).
    timeout_ms: Option<u64>,
}

/// Elements of a verdict map, each a key and the chain it goes to (`goto`); without chains,
/// the keys to delete.
struct ElemsMsg<'a> {
    family: Family,
    map: CString,
    elems: &'a [(Vec<u8>, Option<CString>)],
}

fn table_name() -> CString {
    // TABLE is a constant without NUL bytes.
    CString::new(TABLE).unwrap_or_default()
}

// SAFETY (both impls): the buffer comes from nftnl's Batch and holds a whole message; every
// object allocated here is freed before returning, and libnftnl copies what it is given.
unsafe impl nftnl::NlMsg for MapMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        unsafe {
            let set = sys::nftnl_set_alloc();
            if set.is_null() {
                std::process::abort();
            }
            let table = table_name();
            sys::nftnl_set_set_u32(set, sys::NFTNL_SET_FAMILY as u16, nfproto(self.family));
            sys::nftnl_set_set_str(set, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(set, sys::NFTNL_SET_NAME as u16, self.name.as_ptr());
            sys::nftnl_set_set_u32(set, sys::NFTNL_SET_ID as u16, self.id);
            sys::nftnl_set_set_u32(set, sys::NFTNL_SET_KEY_TYPE as u16, self.key_type);
            sys::nftnl_set_set_u32(set, sys::NFTNL_SET_KEY_LEN as u16, self.key_len);
            if let Some(t) = self.timeout_ms {
                sys::nftnl_set_set_u32(
                    set,
                    sys::NFTNL_SET_FLAGS as u16,
                    (libc::NFT_SET_TIMEOUT | libc::NFT_SET_EVAL) as u32,
                );
                sys::nftnl_set_set_u64(set, sys::NFTNL_SET_TIMEOUT as u16, t);
            }
            if self.verdicts {
                sys::nftnl_set_set_u32(set, sys::NFTNL_SET_FLAGS as u16, libc::NFT_SET_MAP as u32);
                sys::nftnl_set_set_u32(
                    set,
                    sys::NFTNL_SET_DATA_TYPE as u16,
                    libc::NFT_DATA_VERDICT,
                );
            }
            let (t, flags) = match msg_type {
                MsgType::Add => (libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE | libc::NLM_F_ACK),
                MsgType::Del => (libc::NFT_MSG_DELSET, libc::NLM_F_ACK),
            };
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                t as u16,
                nfproto(self.family) as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_set_nlmsg_build_payload(h, set);
            sys::nftnl_set_free(set);
        }
    }
}

unsafe impl nftnl::NlMsg for ElemsMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        unsafe {
            let set = sys::nftnl_set_alloc();
            if set.is_null() {
                std::process::abort();
            }
            let table = table_name();
            sys::nftnl_set_set_u32(set, sys::NFTNL_SET_FAMILY as u16, nfproto(self.family));
            sys::nftnl_set_set_str(set, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(set, sys::NFTNL_SET_NAME as u16, self.map.as_ptr());
            for (key, chain) in self.elems {
                let e = sys::nftnl_set_elem_alloc();
                if e.is_null() {
                    std::process::abort();
                }
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr() as *const c_void,
                    key.len() as u32,
                );
                if let Some(c) = chain {
                    sys::nftnl_set_elem_set_u32(
                        e,
                        sys::NFTNL_SET_ELEM_VERDICT as u16,
                        libc::NFT_GOTO as u32,
                    );
                    sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16, c.as_ptr());
                }
                sys::nftnl_set_elem_add(set, e);
            }
            let (t, flags) = match msg_type {
                MsgType::Add => (
                    libc::NFT_MSG_NEWSETELEM,
                    libc::NLM_F_CREATE | libc::NLM_F_ACK,
                ),
                MsgType::Del => (libc::NFT_MSG_DELSETELEM, libc::NLM_F_ACK),
            };
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                t as u16,
                nfproto(self.family) as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_set_elems_nlmsg_build_payload(h, set);
            sys::nftnl_set_free(set);
        }
    }
}

/// A map key: an address or a port, in network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Ip(IpAddr),
    Port(u16),
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Ip(a) => octets(a),
            Key::Port(p) => p.to_be_bytes().to_vec(),
        }
    }
}

/// One transaction being put together.
pub struct Tx {
    family: Family,
    batch: Batch,
    table: nftnl::Table,
    /// Messages added (for reports and tests).
    pub messages: usize,
    /// Ids handed to sets made in this transaction (the two maps take 1 and 2).
    set_ids: u32,
}

fn proto_family(family: Family) -> ProtoFamily {
    match family {
        Family::V4 => ProtoFamily::Ipv4,
        Family::V6 => ProtoFamily::Ipv6,
    }
}

impl Tx {
    /// A transaction on krab's table of `family` (`ip krab` or `ip6 krab`).
    pub fn new(family: Family) -> Tx {
        Tx {
            family,
            batch: Batch::new(),
            table: nftnl::Table::new(table_name(), proto_family(family)),
            messages: 0,
            set_ids: 2,
        }
    }

    /// A transaction on another table of krab's (`ip <name>` or `ip6 <name>`).
    pub fn for_table(name: &str, family: Family) -> Result<Tx, Error> {
        Ok(Tx {
            family,
            batch: Batch::new(),
            table: nftnl::Table::new(cstr(name)?, proto_family(family)),
            messages: 0,
            set_ids: 2,
        })
    }

    /// Creates the table if it is missing (a no-op otherwise).
    pub fn add_table(&mut self) {
        self.batch.add(&self.table, MsgType::Add);
        self.messages += 1;
    }

    pub fn delete_table(&mut self) {
        self.batch.add(&self.table, MsgType::Del);
        self.messages += 1;
    }

    /// Creates both verdict maps.
    pub fn add_maps(&mut self, ips: &str, ports: &str) -> Result<(), Error> {
        let addr = (addr_key_type(self.family), self.family.addr_len());
        for (id, (name, (key_type, key_len))) in [(ips, addr), (ports, (KEY_INET_SERVICE, 2))]
            .into_iter()
            .enumerate()
        {
            let m = MapMsg {
                family: self.family,
                name: cstr(name)?,
                id: id as u32 + 1,
                key_type,
                key_len,
                verdicts: true,
                timeout_ms: None,
            };
            self.batch.add(&m, MsgType::Add);
            self.messages += 1;
        }
        Ok(())
    }

    /// Creates a set of IPv4 addresses (a no-op when it exists).
    pub fn add_address_set(&mut self, name: &str) -> Result<(), Error> {
        self.set_ids += 1;
        let m = MapMsg {
            family: self.family,
            name: cstr(name)?,
            id: self.set_ids,
            key_type: addr_key_type(self.family),
            key_len: self.family.addr_len(),
            verdicts: false,
            timeout_ms: None,
        };
        self.batch.add(&m, MsgType::Add);
        self.messages += 1;
        Ok(())
    }

    /// Creates a set of client addresses that expire after `timeout_ms` unless refreshed
    /// (a no-op when it exists, so what it holds survives).
    pub fn add_affinity_set(&mut self, name: &str, timeout_ms: u64) -> Result<(), Error> {
        self.set_ids += 1;
        let m = MapMsg {
            family: self.family,
            name: cstr(name)?,
            id: self.set_ids,
            key_type: addr_key_type(self.family),
            key_len: self.family.addr_len(),
            verdicts: false,
            timeout_ms: Some(timeout_ms),
        };
        self.batch.add(&m, MsgType::Add);
        self.messages += 1;
        Ok(())
    }

    pub fn delete_set(&mut self, name: &str) -> Result<(), Error> {
        let m = MapMsg {
            family: self.family,
            name: cstr(name)?,
            id: 0,
            key_type: addr_key_type(self.family),
            key_len: self.family.addr_len(),
            verdicts: false,
            timeout_ms: None,
        };
        self.batch.add(&m, MsgType::Del);
        self.messages += 1;
        Ok(())
    }

    /// Adds addresses to a set.
    pub fn add_addresses(&mut self, set: &str, addrs: &[IpAddr]) -> Result<(), Error> {
        let list: Vec<(Vec<u8>, Option<CString>)> =
            addrs.iter().map(|a| (octets(a), None)).collect();
        self.elements(set, &list, MsgType::Add)
    }

    /// Removes every element of a set (or map).
    pub fn flush_set(&mut self, name: &str) -> Result<(), Error> {
        let m = ElemsMsg {
            family: self.family,
            map: cstr(name)?,
            elems: &[],
        };
        self.batch.add(&m, MsgType::Del);
        self.messages += 1;
        Ok(())
    }

    fn chain<'t>(
        table: &'t nftnl::Table,
        name: &CString,
        hook: Option<BaseHook>,
    ) -> nftnl::Chain<'t> {
        let mut c = nftnl::Chain::new(name, table);
        if let Some(h) = hook {
            let hook = match h.hook {
                Hook::Prerouting => nftnl::Hook::PreRouting,
                Hook::Output => nftnl::Hook::Out,
                Hook::Postrouting => nftnl::Hook::PostRouting,
                Hook::Forward => nftnl::Hook::Forward,
            };
            c.set_hook(hook, h.priority);
            c.set_type(if h.nat {
                nftnl::ChainType::Nat
            } else {
                nftnl::ChainType::Filter
            });
            c.set_policy(nftnl::Policy::Accept);
        }
        c
    }

    /// Creates a chain (a no-op when it exists).
    pub fn add_chain(&mut self, name: &str, hook: Option<BaseHook>) -> Result<(), Error> {
        let n = cstr(name)?;
        let c = Self::chain(&self.table, &n, hook);
        self.batch.add(&c, MsgType::Add);
        self.messages += 1;
        Ok(())
    }

    /// Removes every rule of a chain.
    pub fn flush_chain(&mut self, name: &str) -> Result<(), Error> {
        let n = cstr(name)?;
        let c = Self::chain(&self.table, &n, None);
        let r = nftnl::Rule::new(&c);
        self.batch.add(&r, MsgType::Del);
        self.messages += 1;
        Ok(())
    }

    pub fn delete_chain(&mut self, name: &str) -> Result<(), Error> {
        let n = cstr(name)?;
        let c = Self::chain(&self.table, &n, None);
        self.batch.add(&c, MsgType::Del);
        self.messages += 1;
        Ok(())
    }

    /// Appends a rule to a chain.
    pub fn add_rule(&mut self, chain: &str, rule: &Rule) -> Result<(), Error> {
        let n = cstr(chain)?;
        let c = Self::chain(&self.table, &n, None);
        let mut r = nftnl::Rule::new(&c);
        for s in &rule.0 {
            for e in encode(s, self.family)? {
                r.add_expr(&e);
            }
        }
        self.batch.add(&r, MsgType::Add);
        self.messages += 1;
        Ok(())
    }

    /// Creates a chain with its rules (the chain must not hold rules yet).
    pub fn add_chain_def(&mut self, c: &ChainDef) -> Result<(), Error> {
        self.add_chain(&c.name, c.hook)?;
        for r in &c.rules {
            self.add_rule(&c.name, r)?;
        }
        Ok(())
    }

    /// Adds `key → goto chain` elements to a verdict map.
    pub fn add_elements(&mut self, map: &str, elems: &[(Key, String)]) -> Result<(), Error> {
        let list: Vec<(Vec<u8>, Option<CString>)> = elems
            .iter()
            .map(|(k, c)| Ok((k.bytes(), Some(cstr(c)?))))
            .collect::<Result<_, Error>>()?;
        self.elements(map, &list, MsgType::Add)
    }

    pub fn delete_elements(&mut self, map: &str, keys: &[Key]) -> Result<(), Error> {
        let list: Vec<(Vec<u8>, Option<CString>)> =
            keys.iter().map(|k| (k.bytes(), None)).collect();
        self.elements(map, &list, MsgType::Del)
    }

    fn elements(
        &mut self,
        map: &str,
        list: &[(Vec<u8>, Option<CString>)],
        t: MsgType,
    ) -> Result<(), Error> {
        let map = cstr(map)?;
        for chunk in list.chunks(ELEMS_PER_MESSAGE) {
            let m = ElemsMsg {
                family: self.family,
                map: map.clone(),
                elems: chunk,
            };
            self.batch.add(&m, t);
            self.messages += 1;
        }
        Ok(())
    }

    pub fn finalize(self) -> FinalizedBatch {
        self.batch.finalize()
    }
}

/// Sends a batch as one message (one kernel transaction) and waits for its outcome: only
/// the last message asks for an acknowledgement (nft does the same), so a batch of any size
/// gets one ack, or the error of the message that failed.
pub fn send(batch: &FinalizedBatch) -> Result<(), Error> {
    let seqs = batch.sequence_numbers();
    let Some(last) = seqs.end.checked_sub(1).filter(|l| *l >= seqs.start) else {
        return Ok(());
    };
    let mut buf: Vec<u8> = batch.iter().flat_map(|p| p.iter().copied()).collect();
    let mut at = 0usize;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let seq = u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
        if seqs.contains(&seq) && seq != last {
            let flags = u16::from_ne_bytes([buf[at + 6], buf[at + 7]]) & !(libc::NLM_F_ACK as u16);
            buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        if len < 16 {
            break;
        }
        at += (len + 3) & !3;
    }
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(Error::Socket)?;
    set_receive_timeout(&socket, Duration::from_secs(30))?;
    // The whole batch goes in one sendmsg, so the socket must take it (nft sizes it so too).
    set_int_option(&socket, libc::SO_SNDBUFFORCE, buf.len() + 65536)
        .or_else(|_| set_int_option(&socket, libc::SO_SNDBUF, buf.len() + 65536))?;
    let sent = socket.send(&buf).map_err(Error::Refused)?;
    if sent < buf.len() {
        return Err(Error::Refused(std::io::Error::other("short send")));
    }
    let mut reply = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    loop {
        let n = socket.recv_raw(&mut reply).map_err(Error::Refused)?;
        let mut at = 0usize;
        while at + 16 <= n {
            let word = |o: usize| -> u32 {
                u32::from_ne_bytes([reply[o], reply[o + 1], reply[o + 2], reply[o + 3]])
            };
            let len = word(at) as usize;
            let ty = (word(at + 4) & 0xffff) as i32;
            let seq = word(at + 8);
            if ty == libc::NLMSG_ERROR && at + 20 <= n {
                let code = word(at + 16) as i32;
                if code != 0 {
                    return Err(Error::Refused(std::io::Error::from_raw_os_error(-code)));
                }
                if seq == last {
                    return Ok(());
                }
            }
            if len < 16 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}

fn set_int_option(socket: &mnl::Socket, option: libc::c_int, value: usize) -> Result<(), Error> {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd belongs to the live socket; setsockopt copies the int.
    let rc = unsafe {
        let fd = mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket());
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            &v as *const libc::c_int as *const c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::Socket(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// How many rules a chain of the table holds; None when the table or chain is missing.
pub fn count_rules(family: Family, chain: &str) -> Result<Option<usize>, Error> {
    count_rules_in(TABLE, family, chain)
}

/// How many rules a chain of one of krab's tables holds; None when the table or chain is
/// missing.
pub fn count_rules_in(table: &str, family: Family, chain: &str) -> Result<Option<usize>, Error> {
    let chain = cstr(chain)?;
    let table = cstr(table)?;
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(Error::Socket)?;
    set_receive_timeout(&socket, Duration::from_secs(5))?;
    let mut request = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let seq = 1u32;
    // SAFETY: the buffer holds a whole message; the rule object is freed before returning.
    let len = unsafe {
        let rule = sys::nftnl_rule_alloc();
        if rule.is_null() {
            std::process::abort();
        }
        sys::nftnl_rule_set_str(rule, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
        sys::nftnl_rule_set_str(rule, sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
        let h = sys::nftnl_nlmsg_build_hdr(
            request.as_mut_ptr().cast::<c_char>(),
            libc::NFT_MSG_GETRULE as u16,
            nfproto(family) as u16,
            (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
            seq,
        );
        sys::nftnl_rule_nlmsg_build_payload(h, rule);
        sys::nftnl_rule_free(rule);
        (*(h as *const libc::nlmsghdr)).nlmsg_len as usize
    };
    socket
        .send(request.get(..len).unwrap_or_default())
        .map_err(Error::Socket)?;
    let mut buffer = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let mut count = 0usize;
    loop {
        let n = socket.recv_raw(&mut buffer).map_err(Error::Socket)?;
        let mut at = 0usize;
        while at + 16 <= n {
            let word = |o: usize| -> Option<u32> {
                Some(u32::from_ne_bytes(buffer.get(o..o + 4)?.try_into().ok()?))
            };
            let Some(mlen) = word(at) else { break };
            let ty = (word(at + 4).unwrap_or(0) & 0xffff) as u16;
            match ty as i32 {
                libc::NLMSG_DONE => return Ok(Some(count)),
                libc::NLMSG_ERROR => {
                    let code = word(at + 16).map(|c| c as i32).unwrap_or(0);
                    return match -code {
                        0 => Ok(Some(count)),
                        libc::ENOENT => Ok(None),
                        e => Err(Error::Refused(std::io::Error::from_raw_os_error(e))),
                    };
                }
                _ if ty == (10 << 8) | libc::NFT_MSG_NEWRULE as u16 => count += 1,
                _ => {}
            }
            if mlen < 16 {
                break;
            }
            at += (mlen as usize + 3) & !3;
        }
    }
}

fn set_receive_timeout(socket: &mnl::Socket, t: Duration) -> Result<(), Error> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: the fd belongs to the live socket; setsockopt copies the timeval.
    let rc = unsafe {
        let fd = mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket());
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::Socket(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// libnftnl's own rendering of every rule message in a batch (`[ payload load 4b @ network
/// header + 16 => reg 1 ]` …), one line per rule: the batch decoded from its bytes.
pub fn decode_rules(batch: &FinalizedBatch) -> Vec<String> {
    let mut out = Vec::new();
    for page in batch.iter() {
        let mut at = 0usize;
        while at + 16 <= page.len() {
            let Some(len) = page
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
            else {
                break;
            };
            let len = len as usize;
            if len < 16 || at + len > page.len() {
                break;
            }
            let ty = page
                .get(at + 4..at + 6)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_ne_bytes)
                .unwrap_or(0);
            // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE
            if ty == (10 << 8) | libc::NFT_MSG_NEWRULE as u16 {
                // SAFETY: the bytes are one whole netlink message, aligned as written by
                // libnftnl; the rule object is freed below.
                unsafe {
                    let rule = sys::nftnl_rule_alloc();
                    if !rule.is_null() {
                        let nlh = page.as_ptr().add(at) as *const libc::nlmsghdr;
                        if sys::nftnl_rule_nlmsg_parse(nlh.cast(), rule) >= 0 {
                            let mut text = vec![0u8; 8192];
                            sys::nftnl_rule_snprintf(
                                text.as_mut_ptr().cast::<c_char>(),
                                text.len(),
                                rule,
                                sys::NFTNL_OUTPUT_DEFAULT,
                                0,
                            );
                            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
                            out.push(String::from_utf8_lossy(&text[..end]).into_owned());
                        }
                        sys::nftnl_rule_free(rule);
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dnat_rule_decodes_from_its_netlink_bytes() {
        let mut tx = Tx::new(Family::V4);
        tx.add_table();
        tx.add_chain("lb/default/web/tcp/80/10.42.0.7:8080", None)
            .unwrap();
        tx.add_rule(
            "lb/default/web/tcp/80/10.42.0.7:8080",
            &Rule(vec![
                Stmt::L4Proto(super::super::rules::TCP),
                Stmt::Dnat {
                    addr: "10.42.0.7".parse().unwrap(),
                    port: 8080,
                },
            ]),
        )
        .unwrap();
        tx.add_rule(
            "lb/default/web/tcp/80",
            &Rule(vec![
                Stmt::NumgenZero { modulus: 3 },
                Stmt::Goto("lb/default/web/tcp/80/10.42.0.7:8080".into()),
            ]),
        )
        .unwrap();
        let rules = decode_rules(&tx.finalize());
        assert_eq!(rules.len(), 2, "{rules:?}");
        let dnat = &rules[0];
        assert!(
            dnat.contains("ip krab lb/default/web/tcp/80/10.42.0.7:8080"),
            "{dnat}"
        );
        assert!(dnat.contains("[ meta load l4proto => reg 1 ]"), "{dnat}");
        assert!(dnat.contains("[ cmp eq reg 1 0x00000006 ]"), "{dnat}");
        assert!(dnat.contains("[ immediate reg 1 0x07002a0a ]"), "{dnat}");
        assert!(dnat.contains("[ immediate reg 2 0x0000901f ]"), "{dnat}");
        assert!(
            dnat.contains("[ nat dnat ip addr_min reg 1 proto_min reg 2"),
            "{dnat}"
        );
        let pick = &rules[1];
        assert!(pick.contains("[ numgen reg 1 = random mod 3 ]"), "{pick}");
        assert!(
            pick.contains("goto -> lb/default/web/tcp/80/10.42.0.7:8080"),
            "{pick}"
        );
    }

    #[test]
    fn vmap_lookups_and_the_guard_decode() {
        let mut tx = Tx::new(Family::V4);
        tx.add_rule(
            "services",
            &Rule(vec![Stmt::DaddrVmap("service-ips".into(), Family::V4)]),
        )
        .unwrap();
        tx.add_rule(
            "cluster-guard",
            &Rule(vec![
                Stmt::Daddr {
                    net: "10.43.0.0/16".parse().unwrap(),
                    negate: false,
                },
                Stmt::Reject,
            ]),
        )
        .unwrap();
        let rules = decode_rules(&tx.finalize());
        assert!(rules[0].contains("[ payload load 4b @ network header + 16 => reg 1 ]"));
        assert!(
            rules[0].contains("[ lookup reg 1 set service-ips dreg 0 ]"),
            "{}",
            rules[0]
        );
        assert!(
            rules[1].contains("[ bitwise reg 1 = ( reg 1 & 0x0000ffff ) ^ 0x00000000 ]"),
            "{}",
            rules[1]
        );
        assert!(
            rules[1].contains("[ cmp eq reg 1 0x00002b0a ]"),
            "{}",
            rules[1]
        );
        assert!(
            rules[1].contains("[ reject type 0 code 3 ]"),
            "{}",
            rules[1]
        );
    }

    #[test]
    fn ipv6_tables_match_ipv6_headers_and_sctp_is_a_protocol_like_any() {
        let mut tx = Tx::new(Family::V6);
        tx.add_rule(
            "services",
            &Rule(vec![Stmt::DaddrVmap("service-ips".into(), Family::V6)]),
        )
        .unwrap();
        tx.add_rule(
            "lb/default/sig/sctp/9000",
            &Rule(vec![
                Stmt::L4Proto(super::super::rules::SCTP),
                Stmt::Dport(9000),
                Stmt::Dnat {
                    addr: "fd00:42::7".parse().unwrap(),
                    port: 9000,
                },
            ]),
        )
        .unwrap();
        tx.add_rule(
            "cluster-guard",
            &Rule(vec![
                Stmt::Daddr {
                    net: "fd00:43::/112".parse().unwrap(),
                    negate: false,
                },
                Stmt::Reject,
            ]),
        )
        .unwrap();
        let rules = decode_rules(&tx.finalize());
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert!(rules[0].contains("ip6 krab services"), "{}", rules[0]);
        assert!(
            rules[0].contains("[ payload load 16b @ network header + 24 => reg 1 ]"),
            "{}",
            rules[0]
        );
        assert!(
            rules[1].contains("[ cmp eq reg 1 0x00000084 ]"),
            "{}",
            rules[1]
        );
        assert!(
            rules[1].contains("[ nat dnat ip6 addr_min reg 1"),
            "{}",
            rules[1]
        );
        assert!(
            rules[2].contains("[ reject type 0 code 4 ]"),
            "{}",
            rules[2]
        );
    }
}
