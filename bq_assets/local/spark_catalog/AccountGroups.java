package bqassets.standin;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Set;
import java.util.stream.Collectors;
import org.apache.spark.SparkEnv;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.FunctionIdentifier;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.ExpressionInfo;
import org.apache.spark.sql.catalyst.expressions.Literal;
import org.apache.spark.sql.types.DataTypes;
import scala.Function1;
import scala.Option;
import scala.Tuple3;
import scala.collection.immutable.Seq;
import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

/**
 * Unity Catalog's {@code is_account_group_member(group)} for the local Databricks stand-in, so a
 * dynamic view's text runs on open-source Spark as on a SQL warehouse.
 */
public class AccountGroups extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {
  /** The Spark configuration naming the file of the local user's account groups. */
  public static final String GROUPS_FILE_CONF = "spark.bq_assets.account_groups_file";

  @Override
  public BoxedUnit apply(SparkSessionExtensions extensions) {
    Function1<Seq<Expression>, Expression> builder =
        new AbstractFunction1<Seq<Expression>, Expression>() {
          @Override
          public Expression apply(Seq<Expression> arguments) {
            return membership(arguments);
          }
        };
    extensions.injectFunction(
        new Tuple3<>(
            new FunctionIdentifier("is_account_group_member", Option.empty(), Option.empty()),
            new ExpressionInfo(AccountGroups.class.getName(), "is_account_group_member"),
            builder));
    return BoxedUnit.UNIT;
  }

  /**
   * The groups of the stand-in's one user: the lines of the file {@link #GROUPS_FILE_CONF} names,
   * read at each use (a permanent view is analyzed with the configuration it was created with, so
   * membership cannot come from the session's).
   */
  static Set<String> groups() {
    String file = SparkEnv.get().conf().get(GROUPS_FILE_CONF, "");
    Path path = Paths.get(file);
    if (file.isEmpty() || !Files.exists(path)) {
      return Set.of();
    }
    try {
      return Files.readAllLines(path).stream()
          .map(String::trim)
          .filter(line -> !line.isEmpty())
          .collect(Collectors.toSet());
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static Expression membership(Seq<Expression> arguments) {
    if (arguments.size() != 1 || !arguments.head().foldable()) {
      throw new IllegalArgumentException(
          "is_account_group_member takes one constant string: the account group's name");
    }
    Object group = arguments.head().eval(null);
    boolean member = group != null && groups().contains(group.toString());
    return Literal.create(member, DataTypes.BooleanType);
  }
}
