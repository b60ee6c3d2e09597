//! Go's pc-value tables: pairs of (value delta, pc delta) varints, the value
//! delta zig-zag signed, the pc delta in units of the instruction quantum,
//! starting from value -1 at the function's entry.

use crate::Error;

/// The runs of one pc-value table: (first pc, first pc after, value).
#[derive(Clone, Debug)]
pub struct PcValues<'d> {
    bytes: &'d [u8],
    pc: u64,
    value: i32,
    quantum: u64,
    first: bool,
    failed: bool,
}

impl<'d> PcValues<'d> {
    pub(crate) fn new(bytes: &'d [u8], entry: u64, quantum: u64) -> Self {
        Self {
            bytes,
            pc: entry,
            value: -1,
            quantum,
            first: true,
            failed: false,
        }
    }

    /// The value at `pc`; `None` when the table ends before it.
    pub fn value_at(self, pc: u64) -> Result<Option<i32>, Error> {
        if pc < self.pc {
            return Ok(None);
        }
        for run in self {
            let (_, end, value) = run?;
            if pc < end {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    fn step(&mut self) -> Result<Option<(u64, u64, i32)>, Error> {
        let value_delta = read_varint(&mut self.bytes)?;
        if value_delta == 0 && !self.first {
            return Ok(None);
        }
        self.first = false;
        let delta = if value_delta & 1 != 0 {
            !(value_delta >> 1) as i32
        } else {
            (value_delta >> 1) as i32
        };
        let pc_delta = u64::from(read_varint(&mut self.bytes)?) * self.quantum;
        let start = self.pc;
        self.pc = self
            .pc
            .checked_add(pc_delta)
            .ok_or(Error::Malformed("pc table overflows"))?;
        self.value = self.value.wrapping_add(delta);
        Ok(Some((start, self.pc, self.value)))
    }
}

impl Iterator for PcValues<'_> {
    type Item = Result<(u64, u64, i32), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(run) => run.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// An unsigned LEB128 varint of at most 32 bits.
fn read_varint(bytes: &mut &[u8]) -> Result<u32, Error> {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Ok(value);
        }
    }
    Err(Error::Malformed("pc table varint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_the_deltas_and_end_at_a_zero_value_delta() {
        // -1 -> 0 for 4 bytes (quantum 1), -> 8 for 3, -> 0 for 2, end.
        let table = [0x02, 4, 0x10, 3, 0x0f, 2, 0x00];
        let runs: Vec<_> = PcValues::new(&table, 0x1000, 1)
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            runs,
            [
                (0x1000, 0x1004, 0),
                (0x1004, 0x1007, 8),
                (0x1007, 0x1009, 0)
            ]
        );
        let at = |pc| PcValues::new(&table, 0x1000, 1).value_at(pc).unwrap();
        assert_eq!(
            (at(0x1003), at(0x1004), at(0x1008), at(0x1009)),
            (Some(0), Some(8), Some(0), None)
        );
    }

    #[test]
    fn a_truncated_varint_is_an_error() {
        let table = [0x02, 0x80];
        let runs: Vec<_> = PcValues::new(&table, 0, 1).collect();
        assert_eq!(runs, [Err(Error::Malformed("pc table varint"))]);
    }
}
