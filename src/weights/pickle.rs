//! A bounded unpickler for the subset of pickle that `torch.save` writes.
//!
//! Checkpoints come from outside, so the reader must end every crafted input in an error:
//! - input is a byte slice, every length is checked against what is left of it;
//! - nesting depth is capped (a deep tuple would otherwise overflow the stack when the value is
//!   dropped or cloned, an abort that `catch_unwind` cannot stop);
//! - every value created, pushed, memoised or copied out of the memo (BINGET) is charged to one
//!   budget, so "billion laughs" memo fan-out and long opcode runs end in an error instead of
//!   exhausting memory;
//! - nothing is executed: globals are names, and only the few torch rebuild functions are
//!   interpreted (everything else stays an inert [`Value::Object`]).
//!
//! Tensors come out as [`TensorRef`]s (storage key, dtype, offset, shape, stride); checking them
//! against the bytes the file really holds is the checkpoint reader's job (`pth.rs`).

use std::collections::HashMap;

use candle_core::DType;

/// Limits of one unpickling run. The defaults hold any real checkpoint with a wide margin (a
/// VideoCrafter `model.ckpt` pickle is ~200 KB, nests 6 deep and builds ~50k values) and cap the
/// parser's memory at a few hundred MB whatever the input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Deepest nesting of containers and calls.
    pub max_depth: u32,
    /// Values created plus values copied (memo, stack), in units of one small value; strings
    /// count one unit per 16 bytes on top.
    pub max_cost: u64,
    /// Values and marks on the parse stack at once (torch's pickler batches 1000 items).
    pub max_stack: usize,
    /// Memo entries.
    pub max_memo: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 100,
            max_cost: 1 << 21,
            max_stack: 1 << 18,
            max_memo: 1 << 20,
        }
    }
}

/// The longest module or class name a GLOBAL may carry (Python's are far shorter).
const MAX_NAME: usize = 256;

/// A pickled value. Only what checkpoints contain is kept apart; anything else is inert.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion order kept (state dicts are `OrderedDict`s).
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// `module.name` of a GLOBAL: a name only, never imported.
    Global(Box<(String, String)>),
    /// The result of calling something we do not interpret (`REDUCE`, `NEWOBJ`).
    Object(Box<(Value, Value)>),
    /// A storage named by a persistent id.
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
}

impl Value {
    /// A short description for error messages (never the whole value: it may be huge).
    pub(crate) fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(v) => format!("a tuple of {}", v.len()),
            Value::List(v) => format!("a list of {}", v.len()),
            Value::Dict(v) => format!("a dict of {}", v.len()),
            Value::Set(v) => format!("a set of {}", v.len()),
            Value::Global(g) => format!("the global {}.{}", g.0, g.1),
            Value::Object(o) => match &o.0 {
                Value::Global(g) => format!("an object built by {}.{}", g.0, g.1),
                _ => "an object".into(),
            },
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }
}

/// `('storage', torch.<Type>Storage, key, location, numel[, view_metadata])`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub key: String,
    /// The element type, or the storage class name when it is not one we read.
    pub dtype: Result<DType, String>,
    /// Elements the storage declares (checked against the real bytes by the reader).
    pub numel: u64,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, offsets and strides
/// in elements.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// Where unpickling stopped and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pickle byte {pos}: {msg}")]
pub(crate) struct PickleError {
    pub pos: usize,
    pub msg: String,
}

/// A stack or memo entry: the value plus what it cost and how deep it nests, so containers and
/// copies are charged without walking the value again.
#[derive(Debug, Clone)]
struct Item {
    value: Value,
    depth: u32,
    cost: u64,
}

impl Item {
    /// A value without members; its cost counts its heap bytes too, so copying a long string
    /// out of the memo costs what it allocates.
    fn leaf(value: Value) -> Self {
        let heap = match &value {
            Value::Str(s) => s.len(),
            Value::Bytes(b) | Value::BigInt(b) => b.len(),
            Value::Global(g) => g.0.len() + g.1.len(),
            Value::Storage(s) => s.key.len() + s.dtype.as_ref().err().map_or(0, String::len),
            _ => 0,
        };
        let cost = 1 + heap as u64 / 16;
        Self {
            value,
            depth: 1,
            cost,
        }
    }
}

enum Slot {
    Item(Item),
    Mark,
}

/// Unpickles one pickle from the start of `data`; returns the value and how many bytes it used
/// (legacy checkpoints are several pickles back to back).
pub(crate) fn unpickle(data: &[u8], limits: Limits) -> Result<(Value, usize), PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        limits,
        spent: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let value = m.run()?;
    Ok((value, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    limits: Limits,
    spent: u64,
    stack: Vec<Slot>,
    memo: HashMap<u32, Item>,
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl Into<String>) -> PickleError {
        PickleError {
            pos: self.op_pos,
            msg: msg.into(),
        }
    }

    fn charge(&mut self, cost: u64) -> Result<(), PickleError> {
        self.spent = self.spent.saturating_add(cost);
        if self.spent > self.limits.max_cost {
            return Err(self.err(format!(
                "the pickle builds more than {} values (memo copies included); not a checkpoint",
                self.limits.max_cost
            )));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| self.err(format!("wants {n} bytes past the end of the pickle")))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len_u64(&mut self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n).map_err(|_| self.err("length does not fit in memory"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .take(MAX_NAME + 1)
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("GLOBAL name unterminated or too long"))?;
        let line = self.take(end + 1)?;
        String::from_utf8(line[..end].to_vec()).map_err(|_| self.err("GLOBAL name is not UTF-8"))
    }

    fn push(&mut self, item: Item) -> Result<(), PickleError> {
        self.room()?;
        if item.depth > self.limits.max_depth {
            return Err(self.err(format!(
                "values nest deeper than {} levels; not a checkpoint",
                self.limits.max_depth
            )));
        }
        self.stack.push(Slot::Item(item));
        Ok(())
    }

    fn room(&self) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(self.err(format!(
                "the parse stack grows past {} entries; not a checkpoint",
                self.limits.max_stack
            )));
        }
        Ok(())
    }

    fn push_new(&mut self, value: Value) -> Result<(), PickleError> {
        let item = Item::leaf(value);
        self.charge(item.cost)?;
        self.push(item)
    }

    fn pop(&mut self) -> Result<Item, PickleError> {
        match self.stack.pop() {
            Some(Slot::Item(item)) => Ok(item),
            Some(Slot::Mark) => Err(self.err("a MARK where a value was expected")),
            None => Err(self.err("pops from an empty stack")),
        }
    }

    fn top(&mut self) -> Result<&mut Item, PickleError> {
        let pos = self.op_pos;
        match self.stack.last_mut() {
            Some(Slot::Item(item)) => Ok(item),
            _ => Err(PickleError {
                pos,
                msg: "expects a value on the stack".into(),
            }),
        }
    }

    /// Everything above the most recent MARK, which is removed.
    fn pop_to_mark(&mut self) -> Result<Vec<Item>, PickleError> {
        let at = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self
            .stack
            .drain(at + 1..)
            .map(|s| match s {
                Slot::Item(item) => item,
                Slot::Mark => unreachable!("rposition found the last mark"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    /// A container over `items`, one level deeper than its deepest member.
    fn container(
        &mut self,
        items: Vec<Item>,
        make: fn(Vec<Value>) -> Value,
    ) -> Result<(), PickleError> {
        let depth = items.iter().map(|i| i.depth).max().unwrap_or(0) + 1;
        let cost = items.iter().map(|i| i.cost).sum::<u64>() + 1;
        self.charge(1)?;
        let value = make(items.into_iter().map(|i| i.value).collect());
        self.push(Item { value, depth, cost })
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let item = self.top()?.clone();
        self.charge(item.cost)?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            return Err(self.err(format!(
                "more than {} memo entries; not a checkpoint",
                self.limits.max_memo
            )));
        }
        self.memo.insert(key, item);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let item = self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(format!("memo key {key} was never stored")))?
            .clone();
        self.charge(item.cost)?;
        self.push(item)
    }

    /// Adds `items` to the list (or set) just below them on the stack.
    fn extend(&mut self, items: Vec<Item>) -> Result<(), PickleError> {
        let depth = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
        let cost: u64 = items.iter().map(|i| i.cost).sum();
        let max_depth = self.limits.max_depth;
        let err = self.err("APPEND/ADDITEMS onto something that is not a list or set");
        let target = self.top()?;
        match &mut target.value {
            Value::List(v) | Value::Set(v) => v.extend(items.into_iter().map(|i| i.value)),
            _ => return Err(err),
        }
        target.depth = target.depth.max(depth);
        target.cost += cost;
        if target.depth > max_depth {
            return Err(self.err(format!(
                "values nest deeper than {max_depth} levels; not a checkpoint"
            )));
        }
        Ok(())
    }

    /// Adds key/value pairs to the dict just below them on the stack.
    fn set_items(&mut self, items: Vec<Item>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of values"));
        }
        let depth = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
        let cost: u64 = items.iter().map(|i| i.cost).sum();
        let max_depth = self.limits.max_depth;
        let err = self.err("SETITEM(S) onto something that is not a dict");
        let target = self.top()?;
        let Value::Dict(pairs) = &mut target.value else {
            return Err(err);
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k.value, v.value));
        }
        target.depth = target.depth.max(depth);
        target.cost += cost;
        if target.depth > max_depth {
            return Err(self.err(format!(
                "values nest deeper than {max_depth} levels; not a checkpoint"
            )));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unknown pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.le::<8>()?; // FRAME: a length hint only
                }
                b'.' => {
                    let item = self.pop()?;
                    return Ok(item.value);
                }
                b'(' => {
                    self.charge(1)?;
                    self.room()?;
                    self.stack.push(Slot::Mark);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_to_mark()?;
                }
                b'2' => {
                    let item = self.top()?.clone();
                    self.charge(item.cost)?;
                    self.push(item)?;
                }
                b'N' => self.push_new(Value::None)?,
                0x88 => self.push_new(Value::Bool(true))?,
                0x89 => self.push_new(Value::Bool(false))?,
                b'K' => {
                    let v = self.u8()?;
                    self.push_new(Value::Int(v.into()))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push_new(Value::Int(v.into()))?
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push_new(Value::Int(v.into()))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    self.push_new(long(bytes))?
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le()?);
                    let n = usize::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let bytes = self.take(n)?;
                    self.push_new(long(bytes))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push_new(Value::Float(v))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u32::from_le_bytes(self.le()?).into(),
                        0x8c => self.u8()?.into(),
                        _ => u64::from_le_bytes(self.le()?),
                    };
                    let n = self.len_u64(n)?;
                    let bytes = self.take(n)?;
                    let s = std::str::from_utf8(bytes)
                        .map_err(|_| self.err("string is not UTF-8"))?
                        .to_string();
                    self.push_new(Value::Str(s))?
                }
                b'B' | b'C' | 0x8e | b'T' | b'U' => {
                    let n = match op {
                        b'B' | b'T' => u32::from_le_bytes(self.le()?).into(),
                        b'C' | b'U' => self.u8()?.into(),
                        _ => u64::from_le_bytes(self.le()?),
                    };
                    let n = self.len_u64(n)?;
                    let bytes = self.take(n)?.to_vec();
                    self.push_new(Value::Bytes(bytes))?
                }
                b')' => self.push_new(Value::Tuple(Vec::new()))?,
                b']' => self.push_new(Value::List(Vec::new()))?,
                b'}' => self.push_new(Value::Dict(Vec::new()))?,
                0x8f => self.push_new(Value::Set(Vec::new()))?,
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.container(items, Value::Tuple)?
                }
                b'l' => {
                    let items = self.pop_to_mark()?;
                    self.container(items, Value::List)?
                }
                0x91 => {
                    let items = self.pop_to_mark()?;
                    self.container(items, Value::Set)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.container(items, Value::Tuple)?
                }
                b'd' => {
                    let items = self.pop_to_mark()?;
                    self.push_new(Value::Dict(Vec::new()))?;
                    self.set_items(items)?
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend(vec![item])?
                }
                b'e' | 0x90 => {
                    let items = self.pop_to_mark()?;
                    self.extend(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    self.set_items(items)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_new(Value::Global(Box::new((module, name))))?
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    if module.len() > MAX_NAME || name.len() > MAX_NAME {
                        return Err(self.err("STACK_GLOBAL name too long"));
                    }
                    self.push_new(Value::Global(Box::new((module, name))))?
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let item = self.call(callable, args)?;
                    self.charge(1)?;
                    self.push(item)?
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let item = self.call(callable, args)?;
                    self.charge(1)?;
                    self.push(item)?
                }
                b'b' => {
                    // BUILD sets an object's state (e.g. a state dict's `_metadata`); the
                    // reader needs none of it.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.storage(pid.value)?;
                    self.push_new(Value::Storage(Box::new(storage)))?
                }
                b'q' => {
                    let key = self.u8()?;
                    self.memo_put(key.into())?
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.le()?);
                    self.memo_put(key)?
                }
                0x94 => {
                    let key =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo too large"))?;
                    self.memo_put(key)?
                }
                b'h' => {
                    let key = self.u8()?;
                    self.memo_get(key.into())?
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.le()?);
                    self.memo_get(key)?
                }
                other => {
                    return Err(
                        self.err(format!("opcode 0x{other:02x} is not one torch.save writes"))
                    )
                }
            }
        }
    }

    /// REDUCE/NEWOBJ: the torch rebuild functions become tensors, an empty `OrderedDict()`
    /// becomes a dict (SETITEMS follow), anything else an inert object.
    fn call(&mut self, callable: Item, args: Item) -> Result<Item, PickleError> {
        let name = match &callable.value {
            Value::Global(g) => Some((g.0.as_str(), g.1.as_str())),
            _ => None,
        };
        let value = match name {
            Some(("collections", "OrderedDict")) => match &args.value {
                Value::Tuple(a) if a.is_empty() => Value::Dict(Vec::new()),
                _ => Value::Object(Box::new((callable.value, args.value))),
            },
            Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor")) => {
                Value::Tensor(Box::new(self.rebuild_tensor(args.value)?))
            }
            Some(("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")) => {
                match args.value {
                    Value::Tuple(mut a) if !a.is_empty() && matches!(a[0], Value::Tensor(_)) => {
                        a.swap_remove(0)
                    }
                    other => {
                        return Err(self.err(format!(
                            "_rebuild_parameter wants a tensor first, got {}",
                            other.kind()
                        )))
                    }
                }
            }
            _ => {
                let depth = callable.depth.max(args.depth) + 1;
                let cost = callable.cost + args.cost + 1;
                return Ok(Item {
                    value: Value::Object(Box::new((callable.value, args.value))),
                    depth,
                    cost,
                });
            }
        };
        Ok(Item {
            depth: callable.depth.max(args.depth) + 1,
            cost: callable.cost + args.cost + 1,
            value,
        })
    }

    /// `(storage, storage_offset, size, stride, ...)`.
    fn rebuild_tensor(&self, args: Value) -> Result<TensorRef, PickleError> {
        let Value::Tuple(args) = args else {
            return Err(self.err(format!(
                "tensor rebuild arguments are {}, not a tuple",
                args.kind()
            )));
        };
        if args.len() < 4 {
            return Err(self.err(format!(
                "tensor rebuild wants (storage, offset, size, stride), got {} arguments",
                args.len()
            )));
        }
        let mut args = args.into_iter();
        let storage = match args.next() {
            Some(Value::Storage(s)) => *s,
            Some(other) => {
                return Err(self.err(format!(
                    "tensor storage is {}, not a persistent storage",
                    other.kind()
                )))
            }
            None => unreachable!("length checked"),
        };
        let offset = self.count(args.next(), "storage offset")?;
        let shape = self.counts(args.next(), "size")?;
        let stride = self.counts(args.next(), "stride")?;
        if shape.len() != stride.len() {
            return Err(self.err(format!(
                "tensor size has {} dims but stride {}",
                shape.len(),
                stride.len()
            )));
        }
        Ok(TensorRef {
            storage,
            offset,
            shape,
            stride,
        })
    }

    fn count(&self, v: Option<Value>, what: &str) -> Result<u64, PickleError> {
        match v {
            Some(Value::Int(i)) if i >= 0 => Ok(i as u64),
            Some(other) => Err(self.err(format!(
                "tensor {what} is {}, not a non-negative int",
                other.kind()
            ))),
            None => Err(self.err(format!("tensor {what} is missing"))),
        }
    }

    fn counts(&self, v: Option<Value>, what: &str) -> Result<Vec<u64>, PickleError> {
        match v {
            Some(Value::Tuple(items)) => items
                .into_iter()
                .map(|i| self.count(Some(i), what))
                .collect(),
            Some(other) => Err(self.err(format!("tensor {what} is {}, not a tuple", other.kind()))),
            None => Err(self.err(format!("tensor {what} is missing"))),
        }
    }

    /// Persistent id `('storage', torch.<Type>Storage, key, location, numel[, view])`.
    fn storage(&self, pid: Value) -> Result<StorageRef, PickleError> {
        let Value::Tuple(items) = pid else {
            return Err(self.err(format!("persistent id is {}, not a tuple", pid.kind())));
        };
        let [Value::Str(tag), Value::Global(class), Value::Str(key), Value::Str(_location), Value::Int(numel), rest @ ..] =
            items.as_slice()
        else {
            return Err(self.err("persistent id is not ('storage', type, key, location, numel)"));
        };
        if tag != "storage" {
            return Err(self.err(format!("persistent id kind {tag:?} is not 'storage'")));
        }
        if !matches!(rest, [] | [Value::None]) {
            return Err(self.err("storage views (legacy view_metadata) are not supported"));
        }
        let numel = u64::try_from(*numel).map_err(|_| self.err("negative storage size"))?;
        if key.is_empty() || key.len() > 64 || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(self.err("storage key is not a short alphanumeric name"));
        }
        Ok(StorageRef {
            key: key.clone(),
            dtype: storage_dtype(&class.0, &class.1),
            numel,
        })
    }
}

/// LONG1/LONG4: little-endian two's complement.
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.to_vec());
    }
    let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}

fn storage_dtype(module: &str, name: &str) -> Result<DType, String> {
    if module != "torch" {
        return Err(format!("{module}.{name}"));
    }
    Ok(match name {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "ByteStorage" => DType::U8,
        other => return Err(format!("torch.{other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, PickleError> {
        unpickle(bytes, Limits::default()).map(|(v, _)| v)
    }

    #[test]
    fn reads_containers_ints_and_strings() {
        // {'a': (1, 300, -2), 'b': [None, True]} in protocol 2
        let mut p = vec![0x80, 2, b'}', b'(', 0x8c, 1, b'a', b'K', 1, b'M', 0x2c, 1];
        p.extend_from_slice(&[b'J', 0xfe, 0xff, 0xff, 0xff, 0x87]);
        p.extend_from_slice(&[0x8c, 1, b'b', b']', b'(', b'N', 0x88, b'e', b'u', b'.']);
        let v = run(&p).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::Tuple(vec![Value::Int(1), Value::Int(300), Value::Int(-2)])
                ),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::None, Value::Bool(true)])
                ),
            ])
        );
    }

    #[test]
    fn long1_sign_extends_and_keeps_wide_values() {
        assert_eq!(long(&[0xff]), Value::Int(-1));
        assert_eq!(long(&[0x00, 0x01]), Value::Int(256));
        assert!(matches!(long(&[1; 10]), Value::BigInt(_)));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 200_000));
        p.extend(std::iter::repeat_n(b'a', 199_999));
        p.push(b'.');
        let err = run(&p).unwrap_err();
        assert!(err.msg.contains("nest deeper"), "{err}");
    }

    #[test]
    fn memo_fan_out_is_bounded() {
        // x = [x, x] repeatedly via BINPUT/BINGET: 2^40 values if copied without limit.
        let mut p = vec![0x80, 2, b'N', b'q', 0];
        for _ in 0..40 {
            p.extend_from_slice(&[b'0', b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        let err = run(&p).unwrap_err();
        assert!(err.msg.contains("more than"), "{err}");
    }

    #[test]
    fn a_long_run_of_pushes_is_bounded() {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b'N', 1 << 20));
        p.push(b'.');
        let err = run(&p).unwrap_err();
        assert!(err.msg.contains("parse stack"), "{err}");
    }

    #[test]
    fn reports_where_input_ends_early() {
        let err = run(&[0x80, 2, b'X', 0xff, 0xff, 0, 0, b'a']).unwrap_err();
        assert_eq!(err.pos, 2, "{err}");
        assert!(err.msg.contains("past the end"), "{err}");
    }
}
