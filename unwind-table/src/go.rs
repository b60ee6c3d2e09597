//! Rows for Go functions from their stack-pointer deltas (`pcsp` in
//! `.gopclntab`): Go emits no call frame information, but its table says at
//! every pc how far the stack pointer is below the return address.

use agent_gopclntab::GoTable;

use crate::{RowBuilder, RowKind, UnwindRow};

/// Adds the rows of every Go function of the ELF image `data` to `builder`;
/// returns how many functions had rows (0: not a Go binary).
pub(crate) fn rows(data: &[u8], builder: &mut RowBuilder<'_>) -> u64 {
    let Ok(table) = GoTable::new(data) else {
        return 0;
    };
    let mut functions = 0;
    for f in table.functions() {
        let Ok(f) = f else {
            builder.stats.skipped_functions += 1;
            continue;
        };
        if f.end > u64::from(u32::MAX) || f.entry >= f.end {
            builder.stats.skipped_functions += 1;
            continue;
        }
        functions += 1;
        if table.is_top_frame(&f) {
            // goexit, mstart, rt0_go: nothing called them.
            builder.push(f.entry, UnwindRow::rule(RowKind::End, 0, 0));
        } else if table.writes_sp(&f) {
            // Stack switches (systemstack, mcall, asmcgocall): no rows, so
            // the unwinder follows the frame pointer, which Go keeps across
            // them.
            builder.push(f.entry, UnwindRow::rule(RowKind::None, 0, 0));
        } else {
            match table.sp_deltas(&f).collect::<Result<Vec<_>, _>>() {
                Ok(runs) => {
                    for (start, _, delta) in runs {
                        builder.push(start, rule_for(delta));
                    }
                }
                Err(_) => {
                    builder.stats.unsupported_cfa += 1;
                    builder.push(f.entry, UnwindRow::rule(RowKind::Unsupported, 0, 0));
                }
            }
        }
        builder.end_function(f.end);
    }
    functions
}

/// CFA = rsp + delta + 8 (the return address's slot is at CFA - 8). Once
/// the frame is set up (delta > 0), Go's prologue has saved the caller's
/// frame pointer just below the return address, at CFA - 16.
fn rule_for(delta: i32) -> UnwindRow {
    match u16::try_from(i64::from(delta) + 8) {
        Ok(offset) if delta >= 0 => {
            UnwindRow::rule(RowKind::CfaRsp, offset, if delta > 0 { -2 } else { 0 })
        }
        _ => UnwindRow::rule(RowKind::Unsupported, 0, 0),
    }
}
