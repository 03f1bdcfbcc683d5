"""Node implementations, one module per pack: core images, savers, video and upscaling; KJNodes;
WanVideoWrapper with SCAIL-Pose and NLF; VideoHelperSuite. ``registry`` maps class names to them."""
