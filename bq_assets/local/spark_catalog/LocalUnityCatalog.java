package bqassets.standin;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;
import org.apache.spark.sql.catalyst.analysis.NamespaceAlreadyExistsException;
import org.apache.spark.sql.catalyst.analysis.NoSuchNamespaceException;
import org.apache.spark.sql.catalyst.analysis.NoSuchTableException;
import org.apache.spark.sql.catalyst.analysis.NoSuchViewException;
import org.apache.spark.sql.catalyst.analysis.ViewAlreadyExistsException;
import org.apache.spark.sql.connector.catalog.Identifier;
import org.apache.spark.sql.connector.catalog.NamespaceChange;
import org.apache.spark.sql.connector.catalog.Relation;
import org.apache.spark.sql.connector.catalog.RelationCatalog;
import org.apache.spark.sql.connector.catalog.SupportsNamespaces;
import org.apache.spark.sql.connector.catalog.Table;
import org.apache.spark.sql.connector.catalog.TableChange;
import org.apache.spark.sql.connector.catalog.View;
import org.apache.spark.sql.execution.datasources.v2.parquet.ParquetDataSourceV2;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/**
 * One Unity Catalog catalog of the local Databricks stand-in, as a Spark 4.3 catalog plugin: so
 * that three-part names ({@code catalog.schema.table}) and views in them run on open-source Spark
 * as the same text a SQL warehouse runs.
 *
 * <p>Registered per catalog name ({@code spark.sql.catalog.<name>} = this class, {@code
 * spark.sql.catalog.<name>.warehouse} = the stand-in's folder). Everything lives under {@code
 * <warehouse>/<catalog>/<schema>/}: a table is a folder {@code <table>.table/} of Parquet files
 * (the stand-in writes a foreign catalog's tables there: its copy of a BigQuery table), a view
 * is a file {@code <view>.view.json} (its query text, schema, comment and the session settings
 * it was created with), so views outlive the Spark server. Names are stored in lower case, as
 * Unity Catalog stores them. Tables are never created or altered through SQL (a foreign catalog
 * is read-only); schemas and views are ({@code CREATE SCHEMA}, {@code CREATE OR REPLACE VIEW}).
 *
 * <p>Spark 4.3 requires a catalog holding both tables and views to implement {@link
 * RelationCatalog} (one namespace for both).
 */
public class LocalUnityCatalog implements RelationCatalog, SupportsNamespaces {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final String TABLE = ".table";
  private static final String VIEW = ".view.json";
  private String name;
  private Path root;

  @Override
  public void initialize(String name, CaseInsensitiveStringMap options) {
    this.name = name;
    String warehouse = options.get("warehouse");
    if (warehouse == null) {
      throw new IllegalArgumentException("spark.sql.catalog." + name + ".warehouse is not set");
    }
    this.root = Paths.get(warehouse).resolve(lower(name));
  }

  @Override
  public String name() {
    return name;
  }

  private static String lower(String text) {
    return text.toLowerCase(Locale.ROOT);
  }

  private Path schemaDir(String[] namespace) {
    if (namespace.length != 1) {
      throw new IllegalArgumentException(
          "Unity Catalog names have one schema part: " + String.join(".", namespace));
    }
    return root.resolve(lower(namespace[0]));
  }

  private Path tableDir(Identifier id) {
    return schemaDir(id.namespace()).resolve(lower(id.name()) + TABLE);
  }

  private Path viewFile(Identifier id) {
    return schemaDir(id.namespace()).resolve(lower(id.name()) + VIEW);
  }

  private static List<String> names(Path folder, String suffix) {
    if (!Files.isDirectory(folder)) {
      return List.of();
    }
    try (Stream<Path> entries = Files.list(folder)) {
      return entries
          .map(p -> p.getFileName().toString())
          .filter(n -> n.endsWith(suffix))
          .map(n -> n.substring(0, n.length() - suffix.length()))
          .sorted()
          .toList();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  // -- schemas ------------------------------------------------------------------------------

  @Override
  public String[][] listNamespaces() {
    if (!Files.isDirectory(root)) {
      return new String[0][];
    }
    try (Stream<Path> entries = Files.list(root)) {
      return entries
          .filter(Files::isDirectory)
          .map(p -> new String[] {p.getFileName().toString()})
          .sorted((a, b) -> a[0].compareTo(b[0]))
          .toArray(String[][]::new);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  @Override
  public String[][] listNamespaces(String[] namespace) throws NoSuchNamespaceException {
    if (namespace.length == 0) {
      return listNamespaces();
    }
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(namespace);
    }
    return new String[0][];
  }

  @Override
  public boolean namespaceExists(String[] namespace) {
    return namespace.length == 1 && Files.isDirectory(schemaDir(namespace));
  }

  @Override
  public Map<String, String> loadNamespaceMetadata(String[] namespace)
      throws NoSuchNamespaceException {
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(namespace);
    }
    return Map.of();
  }

  @Override
  public void createNamespace(String[] namespace, Map<String, String> metadata)
      throws NamespaceAlreadyExistsException {
    if (namespaceExists(namespace)) {
      throw new NamespaceAlreadyExistsException(namespace);
    }
    try {
      Files.createDirectories(schemaDir(namespace));
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  @Override
  public void alterNamespace(String[] namespace, NamespaceChange... changes) {
    throw new UnsupportedOperationException("ALTER SCHEMA is not part of the local stand-in");
  }

  @Override
  public boolean dropNamespace(String[] namespace, boolean cascade) {
    throw new UnsupportedOperationException("DROP SCHEMA is not part of the local stand-in");
  }

  // -- tables (read-only: Parquet folders the stand-in writes) -------------------------------

  @Override
  public Identifier[] listTables(String[] namespace) throws NoSuchNamespaceException {
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(namespace);
    }
    return names(schemaDir(namespace), TABLE).stream()
        .map(n -> Identifier.of(namespace, n))
        .toArray(Identifier[]::new);
  }

  @Override
  public Table loadTable(Identifier id) throws NoSuchTableException {
    Path folder = tableDir(id);
    if (!Files.isDirectory(folder)) {
      throw new NoSuchTableException(id);
    }
    Map<String, String> options = new HashMap<>();
    options.put("path", folder.toString());
    return new ParquetDataSourceV2().getTable(new CaseInsensitiveStringMap(options));
  }

  @Override
  public Relation loadRelation(Identifier id) throws NoSuchTableException {
    if (Files.isRegularFile(viewFile(id))) {
      try {
        return loadView(id);
      } catch (NoSuchViewException e) {
        throw new NoSuchTableException(id);
      }
    }
    return loadTable(id);
  }

  @Override
  public Table alterTable(Identifier id, TableChange... changes) {
    throw new UnsupportedOperationException("ALTER TABLE is not part of the local stand-in");
  }

  @Override
  public boolean dropTable(Identifier id) {
    throw new UnsupportedOperationException("DROP TABLE is not part of the local stand-in");
  }

  @Override
  public void renameTable(Identifier from, Identifier to) {
    throw new UnsupportedOperationException("RENAME TABLE is not part of the local stand-in");
  }

  // -- views (one JSON file each) ------------------------------------------------------------

  @Override
  public Identifier[] listViews(String[] namespace) throws NoSuchNamespaceException {
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(namespace);
    }
    return names(schemaDir(namespace), VIEW).stream()
        .map(n -> Identifier.of(namespace, n))
        .toArray(Identifier[]::new);
  }

  @Override
  @SuppressWarnings("unchecked")
  public View loadView(Identifier id) throws NoSuchViewException {
    Path file = viewFile(id);
    if (!Files.isRegularFile(file)) {
      throw new NoSuchViewException(id);
    }
    Map<String, Object> stored;
    try {
      stored = JSON.readValue(file.toFile(), Map.class);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    View.Builder view =
        new View.Builder()
            .withQueryText((String) stored.get("queryText"))
            .withCurrentCatalog((String) stored.get("currentCatalog"))
            .withCurrentNamespace(
                ((List<String>) stored.get("currentNamespace")).toArray(String[]::new))
            .withSqlConfigs((Map<String, String>) stored.get("sqlConfigs"))
            .withSchemaMode((String) stored.get("schemaMode"))
            .withQueryColumnNames(
                ((List<String>) stored.get("queryColumnNames")).toArray(String[]::new));
    view.withSchema((StructType) DataType.fromJson((String) stored.get("schema")));
    view.withProperties((Map<String, String>) stored.get("properties"));
    return view.build();
  }

  private View store(Identifier id, View view) {
    Map<String, Object> stored = new LinkedHashMap<>();
    stored.put("queryText", view.queryText());
    stored.put("currentCatalog", view.currentCatalog());
    stored.put("currentNamespace", Arrays.asList(view.currentNamespace()));
    stored.put("sqlConfigs", view.sqlConfigs());
    stored.put("schemaMode", view.schemaMode());
    stored.put("queryColumnNames", Arrays.asList(view.queryColumnNames()));
    stored.put("schema", view.schema().json());
    stored.put("properties", view.properties());
    Path file = viewFile(id);
    Path partial = file.resolveSibling(file.getFileName() + ".partial");
    try {
      JSON.writeValue(partial.toFile(), stored);
      Files.move(
          partial, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return view;
  }

  @Override
  public View createView(Identifier id, View view)
      throws ViewAlreadyExistsException, NoSuchNamespaceException {
    if (!namespaceExists(id.namespace())) {
      throw new NoSuchNamespaceException(id.namespace());
    }
    if (Files.exists(viewFile(id)) || Files.exists(tableDir(id))) {
      throw new ViewAlreadyExistsException(id);
    }
    return store(id, view);
  }

  @Override
  public View replaceView(Identifier id, View view) throws NoSuchViewException {
    if (!Files.exists(viewFile(id))) {
      throw new NoSuchViewException(id);
    }
    return store(id, view);
  }

  @Override
  public View createOrReplaceView(Identifier id, View view) throws NoSuchNamespaceException {
    if (!namespaceExists(id.namespace())) {
      throw new NoSuchNamespaceException(id.namespace());
    }
    return store(id, view);
  }

  @Override
  public boolean dropView(Identifier id) {
    try {
      return Files.deleteIfExists(viewFile(id));
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  @Override
  public void renameView(Identifier from, Identifier to) {
    throw new UnsupportedOperationException("RENAME VIEW is not part of the local stand-in");
  }
}
