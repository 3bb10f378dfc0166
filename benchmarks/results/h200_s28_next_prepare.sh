# Prepared in session 28 (no device was lent) for the next session. Run here, in the repository root: it makes session
# 27's five variants (h200_s27_next_prepare.sh: s28_base, s28_lists, s28_fixwin, s28_fixed, s28_both, for the first call,
# h200_s27_next_run.sh) and four more for the second call (h200_s28_next_run.sh, never run: session 31 replaced it with h200_s31_next_run.sh). Delete the s28_* folders before
# committing. The four, each with the same files as the first five:
# "xuw":     base + h200_s28_weekend_select.patch (a key's weekend value by a select, not an int-to-float conversion);
# "xu":      base + h200_s28_no_conversions.patch (that, and each pair's time octave made a float by OR-ing it into the
#            mantissa of 2^23 and subtracting 2^23, exactly, instead of an I2F);
# "bothxuw": "both" + h200_s28_weekend_select.patch;
# "bothxu":  "both" + h200_s28_no_conversions.patch.
# Why: I2F issues on the XU pipe, which also runs every pair's MUFU.EX2, at an eighth of the FP32 rate; whether that
# pipe binds the forward is what the second call's Nsight Compute pipe table says first.
set -e
bash benchmarks/results/h200_s27_next_prepare.sh
rm -rf s28_xuw s28_xu s28_bothxuw s28_bothxu
cp -r s28_base s28_xuw; cp -r s28_base s28_xu; cp -r s28_both s28_bothxuw; cp -r s28_both s28_bothxu
patch -s -p1 -d s28_xuw < benchmarks/results/h200_s28_weekend_select.patch
patch -s -p1 -d s28_xu < benchmarks/results/h200_s28_no_conversions.patch
patch -s -p1 -d s28_bothxuw < benchmarks/results/h200_s28_weekend_select.patch
patch -s -p1 -d s28_bothxu < benchmarks/results/h200_s28_no_conversions.patch
echo "prepared s28_xuw s28_xu s28_bothxuw s28_bothxu"
