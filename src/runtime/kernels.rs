//! CPU kernels the candle backends share: matrix products through the `gemm`
//! crate (on the calling thread for small ones), softmax over rows, and an erf
//! that vectorises.

/// Multiply-adds below which a product runs on the calling thread: waking the
/// other threads costs more than they save on a sentence or two.
const PARALLEL_MACS: usize = 1 << 20;

/// Softmax over each row of `n` values, in place.
pub fn softmax_rows(values: &mut [f32], n: usize) {
    for row in values.chunks_exact_mut(n.max(1)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

/// `x · w` for row-major `x` `[m, k]` and `w` `[k, n]`: on this thread for small
/// products, on all of them for large ones. `None` when the lengths disagree
/// with the sizes.
pub fn gemm_rows(x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize)) -> Option<Vec<f32>> {
    if x.len() != m.checked_mul(k)? || w.len() != k.checked_mul(n)? {
        return None;
    }
    let mut out = vec![0f32; m.checked_mul(n)?];
    let parallelism = if m * n * k >= PARALLEL_MACS {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the lengths were checked: out is [m, n], x [m, k], w [k, n], row-major.
    unsafe {
        matmul(
            (m, n, k),
            (out.as_mut_ptr(), n),
            (x.as_ptr(), k, 1),
            (w.as_ptr(), n, 1),
            parallelism,
        );
    }
    Some(out)
}

/// `dst = lhs · rhs` for `(m, n, k)`: `dst` row-major `[m, n]` with row stride
/// `dst.1`; `lhs` `[m, k]` and `rhs` `[k, n]` as (pointer, row stride, column
/// stride), so a transposed view costs nothing.
///
/// # Safety
/// Every element the strides reach must lie inside its buffer.
pub unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        1,
        dst.1 as isize,
        false,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}

/// erf for f32 as a rational function on [-4, 4] (Eigen's and XLA's
/// approximation; erf(±4) is ±1 in f32): no branch, so the loop vectorises, and
/// within 1e-6 of the exact value (checked against libm in the tests).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_2e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_is_within_a_millionth_of_libm() {
        let worst = (-600_000..=600_000)
            .map(|i| i as f32 * 1e-5)
            .map(|x| (erf(x) - libm::erff(x)).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "max abs error {worst}");
    }
}
