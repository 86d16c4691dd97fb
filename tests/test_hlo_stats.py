"""Reading optimized HLO text: collectives per execution (loops counted by their trip
count) and the tile padding of entry parameters."""

from sbs_jax.perf import hlo_stats

# A hand-written program in the compiled text's form: an all-reduce in a loop body that
# runs 3 times, an async all-gather outside it, a fused collective-permute.
HLO = """HloModule jit_step, entry_computation_layout={()}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) parameter(0)
  %c = s32[]{:T(128)} constant(3)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) parameter(0)
  %x = f32[4,8]{1,0:T(8,128)} get-tuple-element(%p), index=1
  %all-reduce.1 = f32[4,8]{1,0:T(8,128)} all-reduce(%x), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %t = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) tuple(%i, %all-reduce.1)
}

%fused (q: bf16[16]) -> bf16[16] {
  %q = bf16[16]{0} parameter(0)
  ROOT %collective-permute.2 = bf16[16]{0} collective-permute(%q), source_target_pairs={{0,1},{1,0}}
}

ENTRY %main (w: f32[3,32], s: s32[], v: bf16[16]) -> f32[4,8] {
  %w = f32[3,32]{1,0:T(4,128)} parameter(0), metadata={op_name="w"}
  %s = s32[]{:T(128)} parameter(1)
  %v = bf16[16]{0} parameter(2)
  %ag = (bf16[16]{0}, bf16[64]{0}, u32[]{:S(2)}) all-gather-start(%v), dimensions={0}
  %agd = bf16[64]{0} all-gather-done(%ag)
  %f = bf16[16]{0} fusion(%v), kind=kCustom, calls=%fused
  %init = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) tuple(%s, %s)
  %loop = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[4,8]{1,0:T(8,128)} get-tuple-element(%loop), index=1
}
"""


def test_collectives_count_loop_bodies_by_their_trip_count():
  got = hlo_stats.collectives(HLO)
  assert got == {
      "all-reduce": {"count": 3, "bytes": 3 * 4 * 8 * 4},
      "all-gather": {"count": 1, "bytes": 64 * 2},  # the result, not the operand
      "collective-permute": {"count": 1, "bytes": 16 * 2},
  }


def test_loop_of_unknown_length_counts_once():
  unknown = HLO.replace("%c = s32[]{:T(128)} constant(3)",
                        "%c = s32[]{:T(128)} get-tuple-element(%p), index=0")
  assert hlo_stats.collectives(unknown)["all-reduce"]["count"] == 1


def test_parameter_padding_follows_the_tiles():
  # f32[3,32] in 4x128 tiles: 512 elements for 96; the s32 scalar takes a 128 tile;
  # bf16[16] without a tile: none.
  assert hlo_stats.parameter_padding_bytes(HLO) == (512 - 96) * 4 + (128 - 1) * 4
