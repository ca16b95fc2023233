//! The 22 TPC-H queries (validation parameters of the specification), as SQL that
//! DataFusion plans. Q15's view is written as a common table expression.

/// A TPC-H query: its number and SQL text.
#[derive(Debug, Clone, Copy)]
pub struct TpchQuery {
    /// 1 to 22.
    pub number: u32,
    /// The SQL.
    pub sql: &'static str,
}

macro_rules! queries {
    ($($n:literal => $file:literal),* $(,)?) => {
        /// All 22 queries in order.
        pub const QUERIES: [TpchQuery; 22] = [$(TpchQuery { number: $n, sql: include_str!($file) }),*];
    };
}

queries! {
    1 => "tpch/q01.sql", 2 => "tpch/q02.sql", 3 => "tpch/q03.sql", 4 => "tpch/q04.sql",
    5 => "tpch/q05.sql", 6 => "tpch/q06.sql", 7 => "tpch/q07.sql", 8 => "tpch/q08.sql",
    9 => "tpch/q09.sql", 10 => "tpch/q10.sql", 11 => "tpch/q11.sql", 12 => "tpch/q12.sql",
    13 => "tpch/q13.sql", 14 => "tpch/q14.sql", 15 => "tpch/q15.sql", 16 => "tpch/q16.sql",
    17 => "tpch/q17.sql", 18 => "tpch/q18.sql", 19 => "tpch/q19.sql", 20 => "tpch/q20.sql",
    21 => "tpch/q21.sql", 22 => "tpch/q22.sql",
}

/// Query `number` (1–22).
pub fn query(number: u32) -> Option<TpchQuery> {
    QUERIES.iter().copied().find(|q| q.number == number)
}
