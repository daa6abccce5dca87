-- Who wrote each revision: "operator:<token name>" (the token's name, never
-- its value), "operator" when no token is configured, or the control-plane
-- replica that ended a rollout. Revisions written before this column say ''.
ALTER TABLE policy_revisions ADD COLUMN actor TEXT NOT NULL DEFAULT '';
