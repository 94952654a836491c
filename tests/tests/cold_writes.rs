//! A replica that has not read the pages a write needs must fetch them and retry, never
//! trip turso's pager (a panic would kill the isolate).

use std::rc::Rc;

use engine_core::mem_store::MemStore;
use engine_core::{DbConfig, SqlValue, Statement};
use futures::executor::block_on;
use twill_tests::open_with;

#[test]
fn cold_replica_inserts_into_an_indexed_table() {
    let store = Rc::new(MemStore::new());
    let mut a = open_with(&store, "cw", DbConfig::default(), 32 << 20);
    block_on(a.transact(&[
        Statement::new("CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL)"),
        Statement::new("CREATE INDEX items_k ON items (k)"),
    ]))
    .unwrap();
    for from in (0..100_000i64).step_by(10_000) {
        block_on(a.transact(&[Statement::with_params(
            "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2) \
             INSERT INTO items SELECT i, (i * 7) % 100000, 'value-' || i FROM s",
            vec![SqlValue::Integer(from), SqlValue::Integer(from + 10_000)],
        )]))
        .unwrap();
    }
    block_on(a.checkpoint()).unwrap();
    for round in 0..4i64 {
        let mut b = open_with(&store, "cw", DbConfig::default(), 32 << 20);
        block_on(b.transact(&[Statement::with_params("SELECT v FROM items WHERE id = ?", vec![SqlValue::Integer(round)])])).unwrap();
        for g in 0..20i64 {
            let group: Vec<Vec<Statement>> = (0..8i64)
                .map(|j| {
                    let id = 1_000_000 + round * 10_000 + g * 8 + j;
                    vec![Statement::with_params(
                        "INSERT INTO items (id, k, v) VALUES (?, ?, ?)",
                        vec![SqlValue::Integer(id), SqlValue::Integer(id), SqlValue::Text(format!("new-{id}"))],
                    )]
                })
                .collect();
            for r in block_on(b.transact_group(group)) {
                r.unwrap();
            }
        }
    }
    let mut check = open_with(&store, "cw", DbConfig::default(), 32 << 20);
    let r = block_on(check.transact(&[Statement::new("SELECT count(*), count(DISTINCT k) FROM items WHERE id >= 1000000")])).unwrap();
    assert_eq!(r.results[0].rows, vec![vec![SqlValue::Integer(640), SqlValue::Integer(640)]], "every acknowledged insert, once");
    let r = block_on(check.transact(&[Statement::new("SELECT count(*) FROM items INDEXED BY items_k WHERE k >= 0")])).unwrap();
    assert_eq!(r.results[0].rows, vec![vec![SqlValue::Integer(100_640)]], "the index agrees with the table");
}
