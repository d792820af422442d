//! `InstanceLimits`: what one policy instance may allocate. wasmtime's
//! `StoreLimits` caps each linear memory on its own; a component may hold
//! several (real guests built by componentize-py or componentize-qjs do),
//! so the memory cap here is charged for all of an instance's memories
//! together.

use wasmtime::{ResourceLimiter, StoreLimits};

pub(super) struct InstanceLimits {
    /// Counts of instances, tables and memories, and table sizes.
    pub per_item: StoreLimits,
    /// Bytes all linear memories of the instance may hold together.
    pub memory_cap: usize,
    /// Bytes they hold now.
    pub memory_total: usize,
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own declared maximum wasmtime refuses the
        // growth after asking: nothing to charge.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = self.memory_total - current + desired;
        if total > self.memory_cap {
            // Worded like wasmtime's own trap, which the pool reports as
            // "exceeded its memory cap".
            wasmtime::bail!(
                "forcing trap when growing memory to {desired} bytes: the instance's memories would hold {total} bytes together"
            );
        }
        let allowed = self.per_item.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_total = total;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.per_item.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.per_item.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.per_item.instances()
    }

    fn tables(&self) -> usize {
        self.per_item.tables()
    }

    fn memories(&self) -> usize {
        self.per_item.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Instance, Module, Store, StoreLimitsBuilder};

    const MIB: usize = 1 << 20;

    fn store(engine: &Engine, cap: usize) -> Store<InstanceLimits> {
        let mut store = Store::new(
            engine,
            InstanceLimits {
                per_item: StoreLimitsBuilder::new()
                    .memory_size(cap)
                    .memories(4)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_cap: cap,
                memory_total: 0,
            },
        );
        store.limiter(|l| l);
        store
    }

    #[test]
    fn the_cap_holds_for_all_memories_together() {
        let engine = Engine::default();
        // Two memories of 3 MiB each (48 pages of 64 KiB): each fits a
        // 4 MiB cap alone, both together do not.
        let two = Module::new(&engine, "(module (memory 48) (memory 48))").unwrap();
        let e = Instance::new(&mut store(&engine, 4 * MIB), &two, &[]).unwrap_err();
        assert!(format!("{e:?}").contains("growing memory"), "{e:?}");
        // Under a cap that holds both, they are fine.
        Instance::new(&mut store(&engine, 6 * MIB), &two, &[]).unwrap();

        // Growth counts too: one memory of 3 MiB, another growing past
        // the 1 MiB left.
        let grow = Module::new(
            &engine,
            r#"(module (memory 48) (memory $m 0)
                 (func (export "grow") (param i32) (result i32)
                   (memory.grow $m (local.get 0))))"#,
        )
        .unwrap();
        let mut s = store(&engine, 4 * MIB);
        let i = Instance::new(&mut s, &grow, &[]).unwrap();
        let f = i.get_typed_func::<i32, i32>(&mut s, "grow").unwrap();
        assert_eq!(f.call(&mut s, 16).unwrap(), 0, "1 MiB more fits");
        assert!(f.call(&mut s, 1).is_err(), "one page more does not");
    }
}
